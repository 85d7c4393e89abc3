//! Checks that an unpacked tree is a usable module before it is switched in (SPEC §7).

use std::{fs, io};

use serde_yaml::Value;

use super::{ModuleInfo, Staging, StorageError, tree};

const MODULE_FILE: &str = "module.yaml";
const VALUES_SCHEMAS: [&str; 2] = ["openapi/config-values.yaml", "openapi/values.yaml"];
/// Module metadata is small; a bigger file is a mistake or an attack on our memory.
const MAX_YAML_BYTES: u64 = 16 * 1024 * 1024;

impl Staging {
    /// `module.yaml` (if present) must be YAML; its `weight` must be an integer (default 900)
    /// and its `name`, if any, must equal `module`. `openapi/config-values.yaml` and
    /// `openapi/values.yaml` (if present) must be YAML mappings (an empty file counts as an
    /// empty mapping). Also refuses symlinks that leave the tree, which a later layer can create.
    pub fn validate(&self, module: &str) -> Result<ModuleInfo, StorageError> {
        self.check_symlinks(&tree::walk(&self.path)?)?;
        let info = match self.read_yaml(MODULE_FILE)? {
            Some(text) => module_info(&text, module)?,
            None => ModuleInfo::default(),
        };
        for file in VALUES_SCHEMAS {
            if let Some(text) = self.read_yaml(file)? {
                require_mapping(file, &text)?;
            }
        }
        Ok(info)
    }

    /// The file's text, or `None` when it does not exist.
    fn read_yaml(&self, rel: &str) -> Result<Option<String>, StorageError> {
        let full = self.path.join(rel);
        match full.symlink_metadata() {
            Ok(_) => {}
            // `openapi` being a file means there is no `openapi/values.yaml` either.
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None);
            }
            // The module's own symlinks lead to a name too long or through too many links:
            // the module is broken, our disk is not.
            Err(err) if unresolvable(&err) => return Err(StorageError::invalid(rel, err)),
            Err(err) => return Err(StorageError::write(&full)(err)),
        }
        // Following symlinks is safe here: all of them were just checked to stay inside.
        let meta = fs::metadata(&full).map_err(|err| StorageError::invalid(rel, err))?;
        if !meta.is_file() {
            return Err(StorageError::invalid(rel, "is not a regular file"));
        }
        if meta.len() > MAX_YAML_BYTES {
            return Err(StorageError::invalid(
                rel,
                format!("is larger than {MAX_YAML_BYTES} bytes"),
            ));
        }
        let bytes = fs::read(&full).map_err(StorageError::write(&full))?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| StorageError::invalid(rel, "is not UTF-8 text"))
    }
}

/// ENAMETOOLONG or ELOOP (`ErrorKind::FilesystemLoop` is not stable yet; 40 on Linux).
fn unresolvable(err: &io::Error) -> bool {
    const ELOOP: i32 = 40;
    err.kind() == io::ErrorKind::InvalidFilename || err.raw_os_error() == Some(ELOOP)
}

/// What a stored tree's `module.yaml` declares (a kept version being switched back in: it was
/// validated whole when first switched in; only its weight is needed again).
pub(super) fn module_info_of_tree(
    tree: &std::path::Path,
    module: &str,
) -> Result<ModuleInfo, StorageError> {
    let path = tree.join(MODULE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => module_info(&text, module),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(ModuleInfo::default()),
        Err(err) => Err(StorageError::write(&path)(err)),
    }
}

fn module_info(text: &str, module: &str) -> Result<ModuleInfo, StorageError> {
    let fields = match parse(MODULE_FILE, text)? {
        Value::Null => return Ok(ModuleInfo::default()),
        Value::Mapping(fields) => fields,
        other => {
            return Err(StorageError::invalid(
                MODULE_FILE,
                format!("must be a mapping, not {}", describe(&other)),
            ));
        }
    };
    if let Some(name) = fields.get("name") {
        check_name(name, module)?;
    }
    let weight = match fields.get("weight") {
        None | Some(Value::Null) => ModuleInfo::DEFAULT_WEIGHT,
        Some(weight) => parse_weight(weight)?,
    };
    Ok(ModuleInfo { weight })
}

fn check_name(name: &Value, module: &str) -> Result<(), StorageError> {
    match name {
        Value::String(name) if name == module => Ok(()),
        Value::String(name) => Err(StorageError::invalid(
            MODULE_FILE,
            format!("name {name:?} does not match the module name {module:?}"),
        )),
        other => Err(StorageError::invalid(
            MODULE_FILE,
            format!("name must be a string, not {}", describe(other)),
        )),
    }
}

fn parse_weight(weight: &Value) -> Result<u32, StorageError> {
    weight
        .as_u64()
        .and_then(|weight| u32::try_from(weight).ok())
        .ok_or_else(|| {
            StorageError::invalid(
                MODULE_FILE,
                format!(
                    "weight must be an integer from 0 to {}, not {}",
                    u32::MAX,
                    describe(weight)
                ),
            )
        })
}

fn require_mapping(file: &str, text: &str) -> Result<(), StorageError> {
    match parse(file, text)? {
        Value::Null | Value::Mapping(_) => Ok(()),
        other => Err(StorageError::invalid(
            file,
            format!("must be a YAML mapping, not {}", describe(&other)),
        )),
    }
}

fn parse(file: &str, text: &str) -> Result<Value, StorageError> {
    serde_yaml::from_str(text)
        .map_err(|err| StorageError::invalid(file, format!("not valid YAML: {err}")))
}

/// A short description for messages; never the whole value, which could be large.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(flag) => format!("the boolean {flag}"),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) if text.len() <= 40 => format!("the string {text:?}"),
        Value::String(_) => "a long string".into(),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(tagged) => format!("a value tagged {}", tagged.tag),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{FailureClass, testkit::*};
    use super::*;

    const MODULE: &str = "echo";

    fn validate(layer: TarLayer) -> Result<ModuleInfo, StorageError> {
        let fixture = Fixture::new();
        let staging = fixture.unpack(MODULE, &[layer.tar()])?;
        staging.validate(MODULE)
    }

    fn invalid(layer: TarLayer) -> String {
        let err = validate(layer).unwrap_err();
        assert_eq!(err.class(), FailureClass::InvalidModule, "{err:?}");
        let message = err.to_string();
        assert!(!message.contains('\n'), "{message}");
        message
    }

    fn weight_of(module_yaml: &str) -> u32 {
        validate(TarLayer::new().file("module.yaml", module_yaml.as_bytes()))
            .unwrap()
            .weight
    }

    #[test]
    fn reads_the_weight_with_its_default() {
        assert_eq!(
            validate(TarLayer::new().file("README.md", b"hi")).unwrap(),
            ModuleInfo { weight: 900 }
        );
        assert_eq!(weight_of(""), 900);
        assert_eq!(weight_of("name: echo\n"), 900);
        assert_eq!(weight_of("weight:\n"), 900);
        assert_eq!(weight_of("name: echo\nweight: 910\ndescription: x\n"), 910);
        assert_eq!(weight_of("weight: 0"), 0);
    }

    #[test]
    fn refuses_a_bad_module_yaml() {
        let module_yaml =
            |text: &str| invalid(TarLayer::new().file("module.yaml", text.as_bytes()));
        assert!(module_yaml("weight: [1\n").starts_with("module.yaml: not valid YAML"));
        assert_eq!(
            module_yaml("name: other\n"),
            r#"module.yaml: name "other" does not match the module name "echo""#
        );
        assert!(module_yaml("name: 5\n").contains("name must be a string"));
        assert_eq!(
            module_yaml("weight: heavy\n"),
            r#"module.yaml: weight must be an integer from 0 to 4294967295, not the string "heavy""#
        );
        assert!(module_yaml("weight: \"910\"\n").contains("weight must be an integer"));
        assert!(module_yaml("weight: -1\n").contains("not the number -1"));
        assert!(module_yaml("weight: 9.5\n").contains("not the number 9.5"));
        assert!(module_yaml("weight: 4294967296\n").contains("weight must be an integer"));
        assert!(module_yaml("- a list\n").contains("must be a mapping, not a list"));
        assert!(module_yaml("a: 1\n---\nb: 2\n").contains("not valid YAML"));
        assert!(invalid(TarLayer::new().dir("module.yaml")).contains("is not a regular file"));
        assert!(invalid(TarLayer::new().file("module.yaml", &[0xff, 0xfe])).contains("UTF-8"));
        assert!(
            invalid(TarLayer::new().symlink("module.yaml", "missing")).starts_with("module.yaml: ")
        );
    }

    #[test]
    fn values_schemas_must_be_mappings() {
        for file in VALUES_SCHEMAS {
            assert!(validate(TarLayer::new().file(file, b"type: object\n")).is_ok());
            assert!(
                validate(TarLayer::new().file(file, b"# nothing yet\n")).is_ok(),
                "empty counts as a mapping"
            );
            assert_eq!(
                invalid(TarLayer::new().file(file, b"- a\n- b\n")),
                format!("{file}: must be a YAML mapping, not a list")
            );
            assert!(invalid(TarLayer::new().file(file, b"just text")).contains("not the string"));
            assert!(invalid(TarLayer::new().file(file, b"{unclosed")).contains("not valid YAML"));
        }
        assert!(validate(TarLayer::new().file("openapi", b"not a directory")).is_ok());
    }

    /// When the module's own symlinks make a schema path unresolvable, that was reported as
    /// our disk failing ("cannot store module"); it is the module's fault. The property test
    /// found the name too long for the kernel; more than 40 links to follow fails the same way.
    #[test]
    fn unresolvable_schema_paths_are_invalid_not_store_errors() {
        let too_long = format!("{}/a", "x".repeat(256));
        let message = invalid(TarLayer::new().symlink("openapi", &too_long));
        assert!(
            message.starts_with("openapi/config-values.yaml: "),
            "{message}"
        );

        // Each link's target is checked within 40 hops; the path through `openapi` needs 41.
        let mut chain = TarLayer::new().dir("d").symlink("openapi", "l1");
        for link in 1..40 {
            chain = chain.symlink(&format!("l{link}"), &format!("l{}", link + 1));
        }
        let message = invalid(chain.symlink("l40", "d"));
        assert!(
            message.starts_with("openapi/config-values.yaml: "),
            "{message}"
        );
    }

    #[test]
    fn follows_symlinks_inside_the_module() {
        let layer = TarLayer::new()
            .file("meta/module.yaml", b"weight: 920\n")
            .symlink("module.yaml", "meta/module.yaml");
        assert_eq!(validate(layer).unwrap().weight, 920);
    }
}
