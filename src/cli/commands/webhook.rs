//! `kubectl mpo webhook`: where each sender posts its push notifications, and the curl line a CI
//! job runs after its push. The token is never printed: the lines name `$MPO_WEBHOOK_TOKEN`.

use clap::Args;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use serde::Serialize;

use super::super::{
    CliError,
    args::Global,
    output::{self, Table},
    source::kube_client,
};

const SERVICE: &str = "mpo-operator-webhook";

/// Print the webhook URLs for each sender and a curl line for CI.
#[derive(Debug, Args)]
#[command(
    override_usage = "kubectl mpo webhook [OPTIONS] [MPO]",
    after_help = "Examples:\n  kubectl mpo webhook echo\n  kubectl mpo webhook --url https://hooks.example.com echo"
)]
pub struct WebhookArgs {
    /// The override a CI job wakes (default: the job names its repository and tag).
    pub mpo: Option<String>,
    /// The address senders reach the listener at (default: the Service's load balancer, else its
    /// in-cluster name).
    #[arg(long)]
    pub url: Option<String>,
    /// Namespace of the operator's Service.
    #[arg(long, default_value = "mpo-operator")]
    pub namespace: String,
}

#[derive(Debug, Serialize)]
struct Endpoint {
    sender: &'static str,
    url: String,
    proof: &'static str,
}

#[derive(Debug, Serialize)]
struct Endpoints {
    endpoints: Vec<Endpoint>,
    ci: String,
}

pub async fn run(global: &Global, args: WebhookArgs) -> Result<(), CliError> {
    let base = match &args.url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => service_url(global, &args.namespace).await?,
    };
    let endpoints = endpoints(&base, args.mpo.as_deref());
    output::print(global.output, &endpoints, |e| {
        let mut table = Table::new(&["SENDER", "URL", "TOKEN"]);
        for endpoint in &e.endpoints {
            table.row(vec![
                endpoint.sender.to_owned(),
                endpoint.url.clone(),
                endpoint.proof.to_owned(),
            ]);
        }
        table
    })?;
    // Under the table, not in it: the curl line is several times wider than a URL.
    if matches!(global.output, output::Format::Table) {
        println!(
            "\nA CI job, after its push:\n  {}",
            output::escape_for_terminal(&endpoints.ci)
        );
    }
    Ok(())
}

/// Every sender's URL under `base`, with the way it shows the token.
fn endpoints(base: &str, mpo: Option<&str>) -> Endpoints {
    let at = |path: &str| format!("{base}/hooks/{path}");
    let body = mpo.map_or_else(
        || r#"{"repository":"'"$IMAGE_REPO"'","tag":"'"$IMAGE_TAG"'"}"#.to_owned(),
        |mpo| format!(r#"{{"mpo":"{mpo}"}}"#),
    );
    Endpoints {
        endpoints: vec![
            Endpoint {
                sender: "docker-registry, GitLab registry, Harbor core",
                url: at("registry"),
                proof: "header Authorization: Bearer <token>",
            },
            Endpoint {
                sender: "Harbor webhook",
                url: at("harbor"),
                proof: "Auth Header: Bearer <token>",
            },
            Endpoint {
                sender: "Docker Hub",
                url: at("dockerhub/<token>"),
                proof: "in the URL",
            },
            Endpoint {
                sender: "Quay",
                url: at("quay/<token>"),
                proof: "in the URL",
            },
            Endpoint {
                sender: "GitHub (package events)",
                url: at("github"),
                proof: "the webhook's secret",
            },
        ],
        ci: format!(
            "curl -fsS -X POST -H \"Authorization: Bearer $MPO_WEBHOOK_TOKEN\" -d '{body}' {}",
            at("generic")
        ),
    }
}

/// The Service's load-balancer address when it has one, else its in-cluster DNS name.
async fn service_url(global: &Global, namespace: &str) -> Result<String, CliError> {
    let client = kube_client(global).await?;
    let service = Api::<Service>::namespaced(client, namespace)
        .get_opt(SERVICE)
        .await?
        .ok_or_else(|| {
            CliError::Usage(format!(
                "no Service {SERVICE} in namespace {namespace} (deploy/webhook.yaml); pass --url"
            ))
        })?;
    let port = service
        .spec
        .as_ref()
        .and_then(|spec| spec.ports.as_ref()?.first().map(|p| p.port))
        .unwrap_or(9443);
    let ingress = service
        .status
        .as_ref()
        .and_then(|status| {
            status
                .load_balancer
                .as_ref()?
                .ingress
                .as_ref()?
                .first()
                .cloned()
        })
        .and_then(|ingress| ingress.hostname.or(ingress.ip));
    let host = ingress.unwrap_or_else(|| format!("{SERVICE}.{namespace}.svc"));
    Ok(format!("http://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sender_has_its_path_and_no_token_is_printed() {
        let e = endpoints("http://hooks:9443", Some("echo"));
        let urls: Vec<&str> = e.endpoints.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://hooks:9443/hooks/registry",
                "http://hooks:9443/hooks/harbor",
                "http://hooks:9443/hooks/dockerhub/<token>",
                "http://hooks:9443/hooks/quay/<token>",
                "http://hooks:9443/hooks/github",
            ]
        );
        assert_eq!(
            e.ci,
            r#"curl -fsS -X POST -H "Authorization: Bearer $MPO_WEBHOOK_TOKEN" -d '{"mpo":"echo"}' http://hooks:9443/hooks/generic"#
        );
        let by_repo = endpoints("http://hooks:9443", None);
        assert!(
            by_repo
                .ci
                .contains(r#"{"repository":"'"$IMAGE_REPO"'","tag":"'"$IMAGE_TAG"'"}"#)
        );
    }
}
