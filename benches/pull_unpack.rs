//! Pull-and-unpack benchmark (Hardening item 3): memory use must not grow with the image size.
//!
//! Generates a module of 100 MiB and of 1 GiB of incompressible data (the layout of
//! `large_module` in tests/support/images.rs: `module.yaml` and `files/blob.bin`, one gzip
//! layer), pushes it to a local plain-HTTP `docker-registry` (tests/support/registry.rs), then
//! measures, each in a child process of its own so that image generation does not count:
//! - the operator's own path: `mpo_operator::install::install`, the function the controller
//!   calls for every download (this binary, re-executed with `__pull`);
//! - `curl <blob> | tar -xzf -` (`tar --zstd -xf -` for a zstd layer; no digest check, no fsync);
//! - `skopeo copy docker://… oci:…` then `tar -xzf` (or `--zstd -xf`) of the layer blob.
//!
//! Wall time is taken here; peak RSS comes from GNU time (`/usr/bin/time -f %M`). For the
//! pipeline the two processes' peaks are added (they run at the same time); for skopeo + tar,
//! which run one after the other, the larger one counts.
//!
//! Run: `cargo bench --bench pull_unpack`. Environment:
//! - `MPO_BENCH_MODULES`: the modules, comma separated: `text` (about 2 000 text files, ~100 MiB
//!   unpacked, ~47 MiB gzip: the realistic shape), `text-zstd` (the same files in a zstd layer,
//!   level 3, as `podman push --compression-format zstd` writes it) and sizes in MiB of one-file
//!   incompressible modules (default `text,text-zstd,100,1024`);
//! - `MPO_BENCH_RUNS`: runs per tool and size, the median is reported (default 1);
//! - `MPO_BENCH_DIR`: where images and unpacked trees go (default: the system temp dir);
//!   needs about 4 × the largest size free.
//!
//! - `MPO_BENCH_POLICY`: `cosign-v2` or `cosign-v3` signs each image with that cosign (`MPO_COSIGN`,
//!   `MPO_COSIGN_V3`: `bash hack/cosign.sh [v3.1.3]` prints the path), and the operator's path
//!   verifies the signature first, as under a source's signature policy (default `none`).
//!
//! Needs `docker-registry`, `curl`, `tar`, `skopeo` and GNU `time` (hack/install-deps.sh).

#[path = "../tests/support/layers.rs"]
mod layers;
#[path = "../tests/support/registry.rs"]
mod registry;
#[path = "../tests/support/token_server.rs"]
mod token_server;

use std::{
    env,
    fs::{self, File},
    io::{self, BufWriter, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use flate2::Compression;
use mpo_operator::{
    Digest,
    install::install,
    registry::{ModuleRef, Registry, RegistryConfig, RegistryCredentials, RepoName, Transport},
    signing::{self, PublicKey},
    storage::{Installed, Limits, ModuleStore},
};
use sha2::{Digest as _, Sha256};

use layers::{DIR_MODE, FILE_MODE, LayerWriter};
use registry::{RegistryKind, TestRegistry};

const MIB: u64 = 1024 * 1024;
/// `text` (the realistic module, [`TEXT_FILES`] small text files) first, then the one-file
/// incompressible modules of 100 MiB and 1 GiB.
const DEFAULT_SHAPES: &str = "text,text-zstd,100,1024";
/// The realistic module: this many text files of about [`TEXT_FILE_BYTES`] each in
/// [`TEXT_DIRS`] directories; about 100 MiB unpacked and 47 MiB gzip, the shape of real modules
/// (templates, CRDs, docs), where per-entry work and fsync dominate, not bytes.
const TEXT_FILES: u64 = 2000;
const TEXT_FILE_BYTES: u64 = 52 * 1024;
const TEXT_DIRS: u64 = 40;
/// The repository path under the registry host; modules are `bench/<module>`.
const REPO_PATH: &str = "bench";
const TAG: &str = "v1";
const GNU_TIME: &str = "/usr/bin/time";
/// The child's marker argument: pull one image with the operator's code and report.
const PULL_ARG: &str = "__pull";
/// 1 GiB of incompressible data gzips to a little more than 1 GiB, the default compressed-size
/// limit (`--max-compressed-size`); the benchmark raises it rather than shrink the module.
const MAX_COMPRESSED_BYTES: u64 = 2 << 30;
/// The child verifies the image's signature with the public key at this path before the pull.
const VERIFY_KEY_ENV: &str = "MPO_BENCH_VERIFY_KEY";
/// The parent's signing key, passed to each child as [`VERIFY_KEY_ENV`].
static VERIFY_KEY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn main() -> Result<()> {
    let args: Vec<String> = env::args().collect();
    if args.get(1).map(String::as_str) == Some(PULL_ARG) {
        return pull_child(&args[2..]);
    }
    run_benchmark()
}

// ---------------------------------------------------------------------------------------------
// The child: the operator's own install pipeline (src/install.rs), nothing copied.
// ---------------------------------------------------------------------------------------------

/// `__pull <host:port> <module> <manifest digest> <store dir>`; prints one `RESULT` line.
fn pull_child(args: &[String]) -> Result<()> {
    let [host, module, digest, store_dir] = args else {
        bail!("usage: {PULL_ARG} <host:port> <module> <digest> <store dir>");
    };
    // The operator runs on `#[tokio::main]`: a multi-threaded runtime, one worker per core.
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    let started = Instant::now();
    let (installed, verify_us) =
        runtime.block_on(pull(host, module, digest, Path::new(store_dir)))?;
    println!(
        "RESULT files={} bytes={} seconds={:.3} vmhwm_kib={} verify_us={verify_us}",
        installed.files,
        installed.bytes,
        started.elapsed().as_secs_f64(),
        vm_hwm_kib()?
    );
    Ok(())
}

/// The install's report and the microseconds the signature check took (0 without a policy).
async fn pull(
    host: &str,
    module: &str,
    digest: &str,
    store_dir: &Path,
) -> Result<(Installed, u64)> {
    let repo = RepoName::parse(&format!("{host}/{REPO_PATH}"))?;
    let registry = Registry::new(&RegistryConfig {
        repo: repo.clone(),
        transport: Transport::Http,
        ca_pem: None,
        credentials: RegistryCredentials::Anonymous,
        connect_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_secs(60),
        min_download_rate: 64 * 1024,
    })?;
    let image = ModuleRef::new(repo, module, TAG)?;
    let digest: Digest = digest.parse().context("parsing the manifest digest")?;
    let store = ModuleStore::new(store_dir, Limits::default());
    let verify_us = match env::var_os(VERIFY_KEY_ENV) {
        Some(key) => verify_signature(&registry, &image, &digest, Path::new(&key)).await?,
        None => 0,
    };

    let report = install(&registry, &store, &image, &digest, MAX_COMPRESSED_BYTES).await?;
    Ok((report.installed, verify_us))
}

/// What the controller does under a signature policy before any layer (controller/verify.rs):
/// the image's signatures read, one must verify with the key.
async fn verify_signature(
    registry: &Registry,
    image: &ModuleRef,
    digest: &Digest,
    key: &Path,
) -> Result<u64> {
    let started = Instant::now();
    let key = PublicKey::from_pem(&fs::read_to_string(key).context("reading the public key")?)?;
    // As controller/verify.rs does: the classic signatures first, the bundles only when none of
    // those verifies.
    let keys = [key];
    let (digest_text, repository) = (digest.to_string(), image.name());
    let mut signatures = registry.classic_signatures(image, digest).await?;
    if signing::check_any(&keys, &signatures, &digest_text, &repository).is_err() {
        signatures.extend(registry.bundle_signatures(image, digest).await?);
        signing::check_any(&keys, &signatures, &digest_text, &repository)?;
    }
    Ok(started.elapsed().as_micros() as u64)
}

/// Peak resident set of this process, as the kernel counts it.
fn vm_hwm_kib() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM in /proc/self/status"))
}

// ---------------------------------------------------------------------------------------------
// The parent: images, reference runs, the table.
// ---------------------------------------------------------------------------------------------

fn run_benchmark() -> Result<()> {
    let shapes = shapes()?;
    let runs = runs()?;
    check_tools()?;
    let work = work_dir()?;
    let registry = TestRegistry::start(RegistryKind::Plain)?;
    eprintln!(
        "[bench] registry at {}, work dir {}",
        registry.host(),
        work.path().display()
    );
    let signer = Signer::of_policy(work.path())?;
    let mut rows = Vec::new();
    for shape in shapes {
        let image = generate_and_push(&registry, work.path(), shape)?;
        if let Some(signer) = &signer {
            signer.sign(&format!(
                "{}/{REPO_PATH}/{}@{}",
                registry.host(),
                image.module,
                image.digest
            ))?;
        }
        rows.push(measure_size(&registry, work.path(), &image, runs)?);
        // The registry keeps its copy; ours is only needed for the push.
        fs::remove_file(&image.layer_file).ok();
    }
    print_table(&rows);
    Ok(())
}

/// cosign with a key pair of its own, when `MPO_BENCH_POLICY` asks for signed images.
struct Signer {
    cosign: PathBuf,
    dir: PathBuf,
    v3: bool,
}

impl Signer {
    fn of_policy(work: &Path) -> Result<Option<Self>> {
        let (variable, v3) = match env::var("MPO_BENCH_POLICY").as_deref() {
            Err(_) | Ok("none") => return Ok(None),
            Ok("cosign-v2") => ("MPO_COSIGN", false),
            Ok("cosign-v3") => ("MPO_COSIGN_V3", true),
            Ok(other) => bail!("MPO_BENCH_POLICY={other}: expected none, cosign-v2 or cosign-v3"),
        };
        let cosign = env::var_os(variable)
            .map(PathBuf::from)
            .with_context(|| format!("{variable}: `bash hack/cosign.sh` prints the path"))?;
        let dir = work.join("cosign");
        fs::create_dir_all(dir.join("docker"))?;
        let signer = Self { cosign, dir, v3 };
        signer.run(&["generate-key-pair", "--output-key-prefix", "bench"])?;
        VERIFY_KEY
            .set(signer.dir.join("bench.pub"))
            .map_err(|_| anyhow!("one signer per run"))?;
        Ok(Some(signer))
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        let out = Command::new(&self.cosign)
            .args(args)
            .current_dir(&self.dir)
            .env("COSIGN_PASSWORD", "")
            .env("DOCKER_CONFIG", self.dir.join("docker"))
            .env("HOME", &self.dir)
            .stdin(Stdio::null())
            .output()
            .context("running cosign")?;
        ensure!(
            out.status.success(),
            "cosign {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn sign(&self, reference: &str) -> Result<()> {
        let mut args = vec!["sign", "--key", "bench.key", "--tlog-upload=false"];
        if self.v3 {
            args.push("--use-signing-config=false");
        }
        args.extend(["--allow-http-registry", "--yes", reference]);
        self.run(&args)
    }
}

fn shapes() -> Result<Vec<Shape>> {
    let text = env::var("MPO_BENCH_MODULES").unwrap_or_else(|_| DEFAULT_SHAPES.to_owned());
    text.split(',')
        .map(|part| match part.trim() {
            "text" => Ok(Shape::Text),
            "text-zstd" => Ok(Shape::TextZstd),
            size => {
                let size: u64 = size
                    .parse()
                    .context("MPO_BENCH_MODULES: `text` or a size in MiB, e.g. text,100")?;
                ensure!(size > 0, "MPO_BENCH_MODULES: sizes must be positive");
                Ok(Shape::Blob(size))
            }
        })
        .collect()
}

fn runs() -> Result<usize> {
    match env::var("MPO_BENCH_RUNS") {
        Err(_) => Ok(1),
        Ok(text) => {
            let runs: usize = text.trim().parse().context("MPO_BENCH_RUNS: a count")?;
            ensure!(runs > 0, "MPO_BENCH_RUNS must be at least 1");
            Ok(runs)
        }
    }
}

fn check_tools() -> Result<()> {
    for tool in [GNU_TIME, "curl", "tar", "skopeo"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        ensure!(found, "{tool} not found; run hack/install-deps.sh");
    }
    Ok(())
}

fn work_dir() -> Result<tempfile::TempDir> {
    let builder = {
        let mut builder = tempfile::Builder::new();
        builder.prefix("mpo-bench-");
        builder
    };
    match env::var_os("MPO_BENCH_DIR") {
        Some(dir) => builder.tempdir_in(dir),
        None => builder.tempdir(),
    }
    .context("creating the work dir")
}

// --- The image ------------------------------------------------------------------------------

/// What a benchmark module looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// `files/blob.bin` of this many MiB of incompressible bytes, gzip fast.
    Blob(u64),
    /// [`TEXT_FILES`] text files, gzip default: the realistic module.
    Text,
    /// The same files, zstd level 3.
    TextZstd,
}

impl Shape {
    fn module(self) -> String {
        match self {
            Self::Blob(mib) => format!("mod{mib}m"),
            Self::Text => format!("text{TEXT_FILES}"),
            Self::TextZstd => format!("text{TEXT_FILES}z"),
        }
    }

    fn is_zstd(self) -> bool {
        self == Self::TextZstd
    }

    /// How `tar` reads the layer: `-xzf` or `--zstd -xf`.
    fn tar_extract(self) -> &'static [&'static str] {
        if self.is_zstd() {
            &["--zstd", "-xf"]
        } else {
            &["-xzf"]
        }
    }

    fn label(self) -> String {
        match self {
            Self::Blob(mib) => format!("{mib} MiB, 1 file"),
            Self::Text => format!(
                "{} MiB, {TEXT_FILES} text files",
                TEXT_FILES * TEXT_FILE_BYTES / MIB
            ),
            Self::TextZstd => format!(
                "{} MiB, {TEXT_FILES} text files, zstd",
                TEXT_FILES * TEXT_FILE_BYTES / MIB
            ),
        }
    }
}

struct PushedImage {
    shape: Shape,
    module: String,
    /// `sha256:…` of the manifest.
    digest: String,
    layer_digest: String,
    layer_file: PathBuf,
    unpacked_bytes: u64,
}

/// Writes the layer to disk while hashing it (memory stays flat at any size), then pushes the
/// layer, config and manifest with curl.
fn generate_and_push(reg: &TestRegistry, work: &Path, shape: Shape) -> Result<PushedImage> {
    let module = shape.module();
    let started = Instant::now();
    let layer_file = work.join(format!("{module}.tar.gz"));
    let layer = match shape {
        Shape::Blob(mib) => write_layer(&layer_file, &module, mib * MIB)?,
        Shape::Text => write_text_layer(&layer_file, &module, Codec::Gzip)?,
        Shape::TextZstd => write_text_layer(&layer_file, &module, Codec::Zstd)?,
    };
    eprintln!(
        "[bench] {module}: layer of {:.1} MiB compressed ({:.1} MiB unpacked) written in {:.1} s",
        layer.size as f64 / MIB as f64,
        layer.unpacked_bytes as f64 / MIB as f64,
        started.elapsed().as_secs_f64()
    );
    let (config, manifest) = config_and_manifest(&layer);
    let config_digest = sha256_of(config.as_bytes());
    let repository = format!("{REPO_PATH}/{module}");
    let config_file = work.join(format!("{module}.config.json"));
    fs::write(&config_file, &config).context("writing the config")?;
    let manifest_file = work.join(format!("{module}.manifest.json"));
    fs::write(&manifest_file, &manifest).context("writing the manifest")?;

    let base = reg.base_url();
    push_blob(&base, &repository, &layer_file, &layer.digest)?;
    push_blob(&base, &repository, &config_file, &config_digest)?;
    push_manifest(&base, &repository, &manifest_file)?;
    eprintln!(
        "[bench] {module}: generated and pushed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(PushedImage {
        shape,
        module,
        digest: sha256_of(manifest.as_bytes()),
        layer_digest: layer.digest,
        layer_file,
        unpacked_bytes: layer.unpacked_bytes,
    })
}

/// The OCI config and manifest of a one-layer image, as JSON text.
fn config_and_manifest(layer: &LayerFile) -> (String, String) {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        layer.diff_id
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{}","size":{}}}]}}"#,
        sha256_of(config.as_bytes()),
        config.len(),
        layer.media_type,
        layer.digest,
        layer.size
    );
    (config, manifest)
}

struct LayerFile {
    media_type: &'static str,
    /// `sha256:…` of the compressed bytes.
    digest: String,
    /// `sha256:…` of the tar bytes (the config's diff_id).
    diff_id: String,
    size: u64,
    /// File data in the layer, what the operator reports as unpacked bytes.
    unpacked_bytes: u64,
}

/// `module.yaml`, `files/`, `files/blob.bin` of `data_bytes` pseudo-random bytes, gzip `fast`:
/// the layout of `large_module` in tests/support/images.rs, with the shared layer builder.
fn write_layer(path: &Path, module: &str, data_bytes: u64) -> Result<LayerFile> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let gz_hashed = Hashing::new(BufWriter::new(file));
    let tar_hashed = Hashing::new(layers::gzip_writer(gz_hashed, Compression::fast()));
    let mut layer = LayerWriter::new(tar_hashed);
    let module_yaml = format!("name: {module}\nweight: 900\n");
    let yaml_len = module_yaml.len() as u64;
    layer.file("module.yaml", FILE_MODE, yaml_len, module_yaml.as_bytes())?;
    layer.dir("files/", DIR_MODE)?;
    let data = PseudoRandom::new(module, data_bytes);
    layer.file("files/blob.bin", FILE_MODE, data_bytes, data)?;
    let (encoder, diff_id, _) = layer.finish().context("finishing the tar")?.finish();
    let (mut writer, digest, size) = encoder.finish().context("finishing gzip")?.finish();
    writer.flush().context("writing the layer")?;
    Ok(LayerFile {
        media_type: GZIP_LAYER,
        digest,
        diff_id,
        size,
        unpacked_bytes: module_yaml.len() as u64 + data_bytes,
    })
}

/// [`TEXT_FILES`] files `files/dir-NN/file-NNNN.yaml` of YAML-like lines (words from a fixed
/// vocabulary and hex numbers: gzip gets about 2.1:1, as on real templates and CRDs) behind a
/// `module.yaml`, gzip at the default level, as module authors' CI pushes them (or zstd at its
/// default level 3).
fn write_text_layer(path: &Path, module: &str, codec: Codec) -> Result<LayerFile> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let compressed_hashed = Hashing::new(BufWriter::new(file));
    let encoder = match codec {
        Codec::Gzip => Encoder::Gzip(layers::gzip_writer(
            compressed_hashed,
            Compression::default(),
        )),
        Codec::Zstd => Encoder::Zstd(
            zstd::stream::Encoder::new(compressed_hashed, 3).context("starting zstd")?,
        ),
    };
    let tar_hashed = Hashing::new(encoder);
    let mut layer = LayerWriter::new(tar_hashed);
    let module_yaml = format!("name: {module}\nweight: 900\n");
    let yaml_len = module_yaml.len() as u64;
    layer.file("module.yaml", FILE_MODE, yaml_len, module_yaml.as_bytes())?;
    let mut text = TextGenerator::new(module);
    let mut unpacked = module_yaml.len() as u64;
    layer.dir("files/", DIR_MODE)?;
    for dir in 0..TEXT_DIRS {
        layer.dir(&format!("files/dir-{dir:02}/"), DIR_MODE)?;
    }
    for index in 0..TEXT_FILES {
        let body = text.file(TEXT_FILE_BYTES as usize);
        let name = format!("files/dir-{:02}/file-{index:04}.yaml", index % TEXT_DIRS);
        layer.file(&name, FILE_MODE, body.len() as u64, body.as_slice())?;
        unpacked += body.len() as u64;
    }
    let (encoder, diff_id, _) = layer.finish().context("finishing the tar")?.finish();
    let (mut writer, digest, size) = encoder
        .finish()
        .context("finishing the compression")?
        .finish();
    writer.flush().context("writing the layer")?;
    Ok(LayerFile {
        media_type: match codec {
            Codec::Gzip => GZIP_LAYER,
            Codec::Zstd => ZSTD_LAYER,
        },
        digest,
        diff_id,
        size,
        unpacked_bytes: unpacked,
    })
}

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

#[derive(Clone, Copy)]
enum Codec {
    Gzip,
    Zstd,
}

/// A gzip or zstd stream writer, finished the same way.
enum Encoder<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Self::Gzip(encoder) => encoder.finish(),
            Self::Zstd(encoder) => encoder.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Gzip(encoder) => encoder.write(buf),
            Self::Zstd(encoder) => encoder.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Gzip(encoder) => encoder.flush(),
            Self::Zstd(encoder) => encoder.flush(),
        }
    }
}

/// Deterministic YAML-like text: `word_word: word word word <24 hex digits>` lines.
struct TextGenerator {
    random: PseudoRandom,
    words: Vec<String>,
}

impl TextGenerator {
    const VOCABULARY: usize = 512;

    fn new(seed: &str) -> Self {
        let mut random = PseudoRandom::new(seed, u64::MAX);
        let words = (0..Self::VOCABULARY)
            .map(|_| {
                let [len, letters @ ..] = random.next_word();
                let len = 3 + usize::from(len % 7);
                letters
                    .iter()
                    .cycle()
                    .take(len)
                    .map(|b| char::from(b'a' + b % 26))
                    .collect()
            })
            .collect();
        Self { random, words }
    }

    fn push_word(&mut self, out: &mut String, separator: char) {
        let pick = u64::from_le_bytes(self.random.next_word()) as usize % Self::VOCABULARY;
        out.push_str(&self.words[pick]);
        out.push(separator);
    }

    fn file(&mut self, len: usize) -> Vec<u8> {
        let mut out = String::with_capacity(len + 80);
        while out.len() < len {
            self.push_word(&mut out, '_');
            self.push_word(&mut out, ':');
            out.push(' ');
            for _ in 0..3 {
                self.push_word(&mut out, ' ');
            }
            let random = [self.random.next_word(), self.random.next_word()].concat();
            out.push_str(&hex::encode(&random[..12]));
            out.push('\n');
        }
        out.truncate(len);
        out.into_bytes()
    }
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.bytes)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// splitmix64, seeded from the module name: incompressible for gzip, and generated as read.
struct PseudoRandom {
    state: u64,
    left: u64,
}

impl PseudoRandom {
    fn new(seed_text: &str, len: u64) -> Self {
        // FNV-1a of the name, like tests/support/images.rs.
        let state = seed_text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Self { state, left: len }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).to_le_bytes()
    }
}

impl Read for PseudoRandom {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        for chunk in buf[..len].chunks_mut(8) {
            let word = self.next_word();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        self.left -= len as u64;
        Ok(len)
    }
}

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A monolithic upload: POST for an upload URL, then PUT the file with the digest. curl
/// streams the file, so the push does not hold the blob in memory either.
fn push_blob(base: &str, repository: &str, file: &Path, digest: &str) -> Result<()> {
    let headers = curl(&[
        "-sS",
        "-f",
        "-X",
        "POST",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("{base}/v2/{repository}/blobs/uploads/"),
    ])?;
    let location = headers
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("location")
                .then(|| value.trim().to_owned())
        })
        .ok_or_else(|| anyhow!("no Location in the upload response: {headers}"))?;
    let location = if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        location
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let file = file.to_str().context("non-UTF-8 work dir")?;
    curl(&[
        "-sS",
        "-f",
        "-H",
        "Content-Type: application/octet-stream",
        "--upload-file",
        file,
        "-o",
        "/dev/null",
        &format!("{location}{separator}digest={digest}"),
    ])?;
    Ok(())
}

fn push_manifest(base: &str, repository: &str, file: &Path) -> Result<()> {
    let file = file.to_str().context("non-UTF-8 work dir")?;
    curl(&[
        "-sS",
        "-f",
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        &format!("@{file}"),
        "-o",
        "/dev/null",
        &format!("{base}/v2/{repository}/manifests/{TAG}"),
    ])?;
    Ok(())
}

fn curl(args: &[&str]) -> Result<String> {
    let output = Command::new("curl")
        .args(args)
        .output()
        .context("running curl")?;
    ensure!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

// --- The runs -------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Sample {
    seconds: f64,
    peak_rss_kib: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Operator,
    CurlTar,
    SkopeoTar,
}

impl Tool {
    const ALL: [Tool; 3] = [Tool::Operator, Tool::CurlTar, Tool::SkopeoTar];

    fn label(self) -> &'static str {
        match self {
            Tool::Operator => "operator (mpo_operator)",
            // No `|`: the table is Markdown.
            Tool::CurlTar => "curl piped to tar -x (gzip or zstd) -",
            Tool::SkopeoTar => "skopeo copy + tar -x (gzip or zstd)",
        }
    }
}

struct SizeRow {
    shape: Shape,
    unpacked_mib: f64,
    samples: Vec<(Tool, Sample)>,
}

fn measure_size(
    reg: &TestRegistry,
    work: &Path,
    image: &PushedImage,
    runs: usize,
) -> Result<SizeRow> {
    let mut all: Vec<(Tool, Vec<Sample>)> = Tool::ALL.iter().map(|t| (*t, Vec::new())).collect();
    for run in 0..runs {
        for (tool, samples) in &mut all {
            let out = work.join(format!("out-{}-{run}", image.module));
            fs::create_dir_all(out.join("tree")).context("creating the output dir")?;
            // Each run starts with nothing dirty in the page cache: the operator's syncfs would
            // otherwise also wait for what the previous tool left to write back.
            let synced = Command::new("sync").status().context("running sync")?;
            ensure!(synced.success(), "sync failed");
            let sample = match tool {
                Tool::Operator => run_operator(reg, image, &out)?,
                Tool::CurlTar => run_curl_tar(reg, image, &out)?,
                Tool::SkopeoTar => run_skopeo_tar(reg, image, &out)?,
            };
            eprintln!(
                "[bench] {}, {}: {:.2} s, {} MiB peak RSS",
                image.shape.label(),
                tool.label(),
                sample.seconds,
                sample.peak_rss_kib / 1024
            );
            fs::remove_dir_all(&out).context("removing the output dir")?;
            samples.push(sample);
        }
    }
    let samples = all
        .into_iter()
        .map(|(tool, samples)| (tool, median(samples)))
        .collect();
    Ok(SizeRow {
        shape: image.shape,
        unpacked_mib: image.unpacked_bytes as f64 / MIB as f64,
        samples,
    })
}

fn median(mut samples: Vec<Sample>) -> Sample {
    samples.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    samples[samples.len() / 2]
}

/// This binary again, in `__pull` mode, under GNU time.
fn run_operator(reg: &TestRegistry, image: &PushedImage, out: &Path) -> Result<Sample> {
    let exe = env::current_exe().context("finding this benchmark's binary")?;
    let rss_file = out.join("operator.rss");
    let started = Instant::now();
    let mut child = timed(&rss_file, &exe);
    child
        .args([PULL_ARG, reg.host(), &image.module, &image.digest])
        .arg(out.join("tree"))
        .env("RUST_LOG", "warn");
    if let Some(key) = VERIFY_KEY.get() {
        child.env(VERIFY_KEY_ENV, key);
    }
    let output = child.output().context("running the pull child")?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(
        output.status.success(),
        "the operator pull failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let bytes = result_field(&stdout, "bytes")?;
    ensure!(
        bytes == image.unpacked_bytes,
        "the operator unpacked {bytes} bytes, expected {}",
        image.unpacked_bytes
    );
    let peak_rss_kib = read_rss(&rss_file)?;
    eprintln!(
        "[bench] operator child: VmHWM {} KiB, GNU time {peak_rss_kib} KiB, signature check {:.1} ms",
        result_field(&stdout, "vmhwm_kib")?,
        result_field(&stdout, "verify_us")? as f64 / 1000.0
    );
    Ok(Sample {
        seconds,
        peak_rss_kib,
    })
}

/// `key=<number>` from the child's `RESULT` line.
fn result_field(stdout: &str, key: &str) -> Result<u64> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("RESULT "))
        .flat_map(str::split_whitespace)
        .find_map(|field| field.strip_prefix(key)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| anyhow!("no {key} in the child's output: {stdout:?}"))
}

/// `curl <blob> | tar -xzf -`, each process under GNU time; their peaks add up (concurrent).
fn run_curl_tar(reg: &TestRegistry, image: &PushedImage, out: &Path) -> Result<Sample> {
    let url = format!(
        "{}/v2/{REPO_PATH}/{}/blobs/{}",
        reg.base_url(),
        image.module,
        image.layer_digest
    );
    let (curl_rss, tar_rss) = (out.join("curl.rss"), out.join("tar.rss"));
    let started = Instant::now();
    let mut curl = timed(&curl_rss, Path::new("curl"))
        .args(["-sS", "-f", &url])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting curl")?;
    let pipe = curl.stdout.take().context("curl's stdout")?;
    let tar_status = timed(&tar_rss, Path::new("tar"))
        .args(image.shape.tar_extract())
        .arg("-")
        .arg("-C")
        .arg(out.join("tree"))
        .stdin(pipe)
        .status()
        .context("running tar")?;
    let curl_status = curl.wait().context("waiting for curl")?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(
        curl_status.success() && tar_status.success(),
        "curl | tar failed"
    );
    Ok(Sample {
        seconds,
        peak_rss_kib: read_rss(&curl_rss)? + read_rss(&tar_rss)?,
    })
}

/// `skopeo copy` into an OCI layout, then `tar -xzf` of the layer blob; one after the other,
/// so the larger peak counts.
fn run_skopeo_tar(reg: &TestRegistry, image: &PushedImage, out: &Path) -> Result<Sample> {
    let layout = out.join("oci");
    let tree = out.join("tree");
    let policy = out.join("policy.json");
    fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .context("writing the skopeo policy")?;
    let (skopeo_rss, tar_rss) = (out.join("skopeo.rss"), out.join("tar.rss"));
    let source = format!("docker://{}/{REPO_PATH}/{}:{TAG}", reg.host(), image.module);
    let destination = format!("oci:{}:{TAG}", layout.display());
    let started = Instant::now();
    let skopeo = timed(&skopeo_rss, Path::new("skopeo"))
        .arg("--policy")
        .arg(&policy)
        .args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &source,
            &destination,
        ])
        .output()
        .context("running skopeo")?;
    ensure!(
        skopeo.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&skopeo.stderr)
    );
    let hex = image.layer_digest.trim_start_matches("sha256:");
    let blob = layout.join("blobs/sha256").join(hex);
    let tar_status = timed(&tar_rss, Path::new("tar"))
        .args(image.shape.tar_extract())
        .arg(&blob)
        .arg("-C")
        .arg(&tree)
        .status()
        .context("running tar")?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(tar_status.success(), "tar -xzf of the skopeo blob failed");
    Ok(Sample {
        seconds,
        peak_rss_kib: read_rss(&skopeo_rss)?.max(read_rss(&tar_rss)?),
    })
}

/// `program` under `/usr/bin/time -f %M -o rss_file` (max RSS in KiB).
fn timed(rss_file: &Path, program: &Path) -> Command {
    let mut command = Command::new(GNU_TIME);
    command.args(["-f", "%M", "-o"]).arg(rss_file).arg(program);
    command
}

fn read_rss(rss_file: &Path) -> Result<u64> {
    let text =
        fs::read_to_string(rss_file).with_context(|| format!("reading {}", rss_file.display()))?;
    // GNU time writes "Command exited with non-zero status" first when it failed.
    text.lines()
        .last()
        .and_then(|line| line.trim().parse().ok())
        .ok_or_else(|| anyhow!("no RSS in {}: {text:?}", rss_file.display()))
}

// --- The table ------------------------------------------------------------------------------

fn print_table(rows: &[SizeRow]) {
    println!();
    println!(
        "| module | tool | seconds | unpacked MiB/s | peak RSS MiB | time ÷ curl+tar | RSS ÷ curl+tar | time ÷ skopeo+tar | RSS ÷ skopeo+tar |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let of = |tool: Tool| {
            row.samples
                .iter()
                .find(|(t, _)| *t == tool)
                .map(|(_, sample)| *sample)
        };
        for (tool, sample) in &row.samples {
            let ratios = match (tool, of(Tool::CurlTar), of(Tool::SkopeoTar)) {
                (Tool::Operator, Some(curl), Some(skopeo)) => format!(
                    "{:.2} | {:.2} | {:.2} | {:.2}",
                    sample.seconds / curl.seconds,
                    sample.peak_rss_kib as f64 / curl.peak_rss_kib as f64,
                    sample.seconds / skopeo.seconds,
                    sample.peak_rss_kib as f64 / skopeo.peak_rss_kib as f64
                ),
                _ => "| | |".into(),
            };
            println!(
                "| {} | {} | {:.2} | {:.0} | {:.1} | {ratios} |",
                row.shape.label(),
                tool.label(),
                sample.seconds,
                row.unpacked_mib / sample.seconds,
                sample.peak_rss_kib as f64 / 1024.0
            );
        }
    }
}
