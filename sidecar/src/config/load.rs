//! The layered loader: defaults, then a TOML file, then `CHATUP_<SECTION>_<KEY>`
//! environment variables, then `--set section.key=value` flags (later layers win).
//!
//! The set of keys is not written down anywhere but in [`Config`]: the defaults are
//! serialized to a TOML tree and its leaves are the keys. Every layer is checked against that
//! tree, so an unknown or mistyped key fails loudly and names itself instead of being ignored.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use toml::{Table, Value};

use super::{Config, ConfigError};

/// Prefix of every environment variable that overrides a config key.
pub const ENV_PREFIX: &str = "CHATUP_";

/// Environment variable naming the config file (same as `--config`).
pub const CONFIG_FILE_ENV: &str = "CHATUP_CONFIG";

/// Keys that were renamed, `(old, new)`. The old name is still read in every layer (file,
/// environment, `--set`), with a warning naming the new one; both given with different
/// values is an error.
pub const RENAMED_KEYS: &[(&str, &str)] = &[("roles.worker", "roles.chat_host")];

/// A loaded configuration and the warnings met on the way (logged once logging is set up).
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    /// The defaults as a TOML tree: the authoritative list of keys and their types.
    pub fn defaults_tree() -> Table {
        match Value::try_from(Config::default()) {
            Ok(Value::Table(t)) => t,
            // The defaults are plain data that always serialize to a table.
            _ => Table::new(),
        }
    }

    /// Every key as `section.key`, in file order of sections.
    pub fn keys() -> Vec<String> {
        leaves(&Config::defaults_tree())
            .into_iter()
            .map(|(path, _)| path.join("."))
            .collect()
    }

    /// The environment variable that overrides `key` (`http.listen` → `CHATUP_HTTP_LISTEN`).
    pub fn env_var(key: &str) -> String {
        format!("{ENV_PREFIX}{}", key.replace('.', "_").to_uppercase())
    }

    /// Loads the layers in order: defaults, `file`, the `CHATUP_*` variables of `env`, then
    /// the `--set` assignments.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (OsString, OsString)>,
        sets: &[String],
    ) -> Result<Loaded, ConfigError> {
        let defaults = Config::defaults_tree();
        let mut merged = defaults.clone();
        let mut warnings = Vec::new();
        let mut renames: Vec<Rename> = RENAMED_KEYS
            .iter()
            .map(|&(old, new)| Rename::new(old, new))
            .collect();

        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                path: path.to_owned(),
                source,
            })?;
            let mut table: Table = toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            let origin = format!("config file {}", path.display());
            for rename in &mut renames {
                if let Some(value) = take_path(&mut table, rename.old) {
                    check_type(rename.default(&defaults)?, &value, rename.old, &origin)?;
                    rename.old_given = Some((value, origin.clone()));
                }
            }
            merge_table(&defaults, &mut merged, &table, &mut Vec::new(), &origin)?;
            for rename in &mut renames {
                let path: Vec<&str> = rename.new.split('.').collect();
                if let Some(value) = get_path(&table, &path) {
                    rename.new_given = Some((value.clone(), origin.clone()));
                }
            }
        }

        let key_by_env: BTreeMap<String, Vec<String>> = leaves(&defaults)
            .into_iter()
            .map(|(path, _)| (Config::env_var(&path.join(".")), path))
            .collect();
        let mut env_values: BTreeMap<String, (Vec<String>, String)> = BTreeMap::new();
        for (name, value) in env {
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(ENV_PREFIX) || name == CONFIG_FILE_ENV {
                continue;
            }
            if let Some(rename) = renames.iter_mut().find(|r| Config::env_var(r.old) == name) {
                let origin = format!("environment variable {name}");
                let raw = value.to_str().ok_or_else(|| ConfigError::BadValue {
                    key: rename.old.into(),
                    origin: origin.clone(),
                    message: "not valid UTF-8".into(),
                })?;
                let value = leaf_value(rename.default(&defaults)?, raw, rename.old, &origin)?;
                rename.old_given = Some((value, origin));
                continue;
            }
            let Some(path) = key_by_env.get(name) else {
                warnings.push(format!(
                    "environment variable {name} matches no config key and is ignored"
                ));
                continue;
            };
            let value = value.into_string().map_err(|_| ConfigError::BadValue {
                key: path.join("."),
                origin: format!("environment variable {name}"),
                message: "not valid UTF-8".into(),
            })?;
            env_values.insert(name.to_owned(), (path.clone(), value));
        }
        for (name, (path, raw)) in env_values {
            let origin = format!("environment variable {name}");
            set_leaf(&defaults, &mut merged, &path, &raw, &origin)?;
            note_new_key(&mut renames, &merged, &path, &origin);
        }

        for assignment in sets {
            let (key, raw) = assignment
                .split_once('=')
                .ok_or_else(|| ConfigError::BadSet(assignment.clone()))?;
            let path: Vec<String> = key.trim().split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err(ConfigError::BadSet(assignment.clone()));
            }
            if let Some(rename) = renames.iter_mut().find(|r| r.old == path.join(".")) {
                let value = leaf_value(rename.default(&defaults)?, raw, rename.old, "--set")?;
                rename.old_given = Some((value, "--set".into()));
                continue;
            }
            set_leaf(&defaults, &mut merged, &path, raw, "--set")?;
            note_new_key(&mut renames, &merged, &path, "--set");
        }

        for rename in renames {
            let Some((value, old_origin)) = rename.old_given else {
                continue;
            };
            warnings.push(format!(
                "config key `{}` ({old_origin}) is deprecated: it is now `{}` (environment \
                 variable {}); rename it",
                rename.old,
                rename.new,
                Config::env_var(rename.new),
            ));
            match rename.new_given {
                Some((new_value, new_origin)) if new_value != value => {
                    return Err(ConfigError::RenamedConflict {
                        old: rename.old,
                        old_origin,
                        new: rename.new,
                        new_origin,
                    });
                }
                Some(_) => {}
                None => {
                    let path: Vec<&str> = rename.new.split('.').collect();
                    if let Some(slot) = get_path_mut(&mut merged, &path) {
                        *slot = value;
                    }
                }
            }
        }

        let config: Config = serde_path_to_error::deserialize(Value::Table(merged)).map_err(
            |e: serde_path_to_error::Error<toml::de::Error>| ConfigError::Invalid {
                key: e.path().to_string(),
                message: e.inner().to_string(),
            },
        )?;
        config.validate()?;
        Ok(Loaded { config, warnings })
    }
}

/// Text for `--help`: every key with its environment variable and default.
pub fn keys_help() -> String {
    let mut out = String::from(
        "Configuration keys (TOML file section.key; environment variable; default).\n\
         Precedence: --set > environment > config file > default. Lists in environment\n\
         variables and --set are comma-separated (CHATUP_AUTH_ALGORITHMS=RS256,RS512) or\n\
         written as in TOML (--set 'dispatch.cors_origins=[\"*\"]'); a string may be quoted.\n\n",
    );
    for (path, value) in leaves(&Config::defaults_tree()) {
        let key = path.join(".");
        out.push_str(&format!(
            "  {key:<24} {:<32} {}\n",
            Config::env_var(&key),
            value
        ));
    }
    out
}

/// The leaves of a tree, each with its path.
fn leaves(table: &Table) -> Vec<(Vec<String>, Value)> {
    fn walk(table: &Table, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
        for (k, v) in table {
            prefix.push(k.clone());
            match v {
                Value::Table(t) => walk(t, prefix, out),
                other => out.push((prefix.clone(), other.clone())),
            }
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    walk(table, &mut Vec::new(), &mut out);
    out
}

fn known_keys() -> String {
    Config::keys().join(", ")
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "true or false",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

/// Copies `given` into `merged`, refusing keys that `defaults` does not have and values whose
/// type differs from the default's.
fn merge_table(
    defaults: &Table,
    merged: &mut Table,
    given: &Table,
    path: &mut Vec<String>,
    origin: &str,
) -> Result<(), ConfigError> {
    for (k, v) in given {
        path.push(k.clone());
        let key = path.join(".");
        let (Some(default), Some(slot)) = (defaults.get(k), merged.get_mut(k)) else {
            return Err(ConfigError::UnknownKey {
                key,
                origin: origin.into(),
                known: known_keys(),
            });
        };
        match (default, v, slot) {
            (Value::Table(d), Value::Table(g), Value::Table(m)) => {
                merge_table(d, m, g, path, origin)?
            }
            (d, g, slot) => {
                check_type(d, g, &key, origin)?;
                *slot = g.clone();
            }
        }
        path.pop();
    }
    Ok(())
}

fn check_type(default: &Value, given: &Value, key: &str, origin: &str) -> Result<(), ConfigError> {
    let same = std::mem::discriminant(default) == std::mem::discriminant(given);
    if same {
        if let (Value::Array(_), Value::Array(items)) = (default, given) {
            if let Some(bad) = items.iter().find(|i| !i.is_str()) {
                return Err(ConfigError::WrongType {
                    key: key.into(),
                    origin: origin.into(),
                    expected: "a list of strings",
                    found: type_name(bad),
                });
            }
        }
        return Ok(());
    }
    Err(ConfigError::WrongType {
        key: key.into(),
        origin: origin.into(),
        expected: type_name(default),
        found: type_name(given),
    })
}

/// Sets one leaf from text (an environment variable or `--set`), typed like its default.
fn set_leaf(
    defaults: &Table,
    merged: &mut Table,
    path: &[String],
    raw: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let key = path.join(".");
    let unknown = || ConfigError::UnknownKey {
        key: key.clone(),
        origin: origin.into(),
        known: known_keys(),
    };
    let (last, parents) = path.split_last().ok_or_else(unknown)?;
    let mut d = defaults;
    let mut m = merged;
    for p in parents {
        match (d.get(p), m.get_mut(p)) {
            (Some(Value::Table(dt)), Some(Value::Table(mt))) => {
                d = dt;
                m = mt;
            }
            _ => return Err(unknown()),
        }
    }
    let default = match d.get(last) {
        Some(Value::Table(_)) | None => return Err(unknown()),
        Some(v) => v,
    };
    let value = leaf_value(default, raw, &key, origin)?;
    m.insert(last.clone(), value);
    Ok(())
}

/// A leaf's value from text (an environment variable or `--set`), typed like `default`.
fn leaf_value(default: &Value, raw: &str, key: &str, origin: &str) -> Result<Value, ConfigError> {
    let bad = |message: String| ConfigError::BadValue {
        key: key.into(),
        origin: origin.into(),
        message,
    };
    let raw_trimmed = raw.trim();
    // A TOML value as in the file (`["*"]`, `"text"`), for the kinds whose plain form
    // would take the brackets or quotes literally.
    let toml_value = || -> Result<Value, ConfigError> {
        let mut table: toml::Table = toml::from_str(&format!("v = {raw_trimmed}"))
            .map_err(|e| bad(format!("{raw:?} is not a TOML value: {}", e.message())))?;
        table
            .remove("v")
            .ok_or_else(|| bad(format!("{raw:?} is not a TOML value")))
    };
    let quoted =
        raw_trimmed.len() >= 2 && raw_trimmed.starts_with('"') && raw_trimmed.ends_with('"');
    let value = match default {
        Value::String(_) if quoted => match toml_value()? {
            text @ Value::String(_) => text,
            _ => return Err(bad(format!("expected a string, got {raw:?}"))),
        },
        Value::String(_) => Value::String(raw.to_owned()),
        Value::Integer(_) => Value::Integer(
            raw_trimmed
                .parse()
                .map_err(|_| bad(format!("expected an integer, got {raw:?}")))?,
        ),
        Value::Float(_) => Value::Float(
            raw_trimmed
                .parse()
                .map_err(|_| bad(format!("expected a number, got {raw:?}")))?,
        ),
        Value::Boolean(_) => Value::Boolean(
            raw_trimmed
                .parse()
                .map_err(|_| bad(format!("expected true or false, got {raw:?}")))?,
        ),
        Value::Array(_) if raw_trimmed.starts_with('[') => match toml_value()? {
            list @ Value::Array(_) => list,
            _ => return Err(bad(format!("expected a list, got {raw:?}"))),
        },
        Value::Array(_) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        Value::Datetime(_) | Value::Table(_) => {
            return Err(bad("this key cannot be set from text".into()))
        }
    };
    Ok(value)
}

/// A renamed key met while loading: where each of its names was given, last layer winning.
struct Rename {
    old: &'static str,
    new: &'static str,
    /// The value given under the old name, and where.
    old_given: Option<(Value, String)>,
    /// The value given under the new name, and where: compared with the old one.
    new_given: Option<(Value, String)>,
}

impl Rename {
    fn new(old: &'static str, new: &'static str) -> Self {
        Self {
            old,
            new,
            old_given: None,
            new_given: None,
        }
    }

    /// The new key's default, which types the value given under the old name.
    fn default<'a>(&self, defaults: &'a Table) -> Result<&'a Value, ConfigError> {
        let path: Vec<&str> = self.new.split('.').collect();
        get_path(defaults, &path).ok_or_else(|| ConfigError::UnknownKey {
            key: self.new.into(),
            origin: "the list of renamed keys".into(),
            known: known_keys(),
        })
    }
}

/// Records that a layer set the new name of a renamed key.
fn note_new_key(renames: &mut [Rename], merged: &Table, path: &[String], origin: &str) {
    let key = path.join(".");
    for rename in renames.iter_mut().filter(|r| r.new == key) {
        let parts: Vec<&str> = path.iter().map(String::as_str).collect();
        if let Some(value) = get_path(merged, &parts) {
            rename.new_given = Some((value.clone(), origin.into()));
        }
    }
}

fn get_path<'a>(table: &'a Table, path: &[&str]) -> Option<&'a Value> {
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for p in parents {
        t = t.get(*p)?.as_table()?;
    }
    t.get(*last)
}

fn get_path_mut<'a>(table: &'a mut Table, path: &[&str]) -> Option<&'a mut Value> {
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for p in parents {
        t = t.get_mut(*p)?.as_table_mut()?;
    }
    t.get_mut(*last)
}

/// Removes a dotted key from a parsed file, returning its value.
fn take_path(table: &mut Table, dotted: &str) -> Option<Value> {
    let path: Vec<&str> = dotted.split('.').collect();
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for p in parents {
        t = t.get_mut(*p)?.as_table_mut()?;
    }
    t.remove(*last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;

    use jsonwebtoken::Algorithm;

    use crate::config::testing::env;
    use crate::config::{LogFormat, SocketMode};

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = Config::load(None, env(&[]), &[]).unwrap().config;
        assert_eq!(c.relay.socket, PathBuf::from("/run/chatup/relay.sock"));
        assert_eq!(c.relay.socket_mode, SocketMode(0o660));
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:7001");
        assert_eq!(c.auth.algorithms, vec![Algorithm::RS256]);
        assert_eq!(c.auth.leeway_seconds, 5);
        assert_eq!(c.limits.max_message_chars, 1000);
        assert_eq!(c.limits.max_event_bytes, 4096);
        assert_eq!(c.limits.idempotency_window_seconds, 300);
        assert_eq!(c.history.size, 100);
        assert_eq!(c.history.ttl_seconds, 86400);
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn keys_come_from_the_struct() {
        let keys = Config::keys();
        for k in [
            "relay.socket",
            "relay.socket_mode",
            "http.listen",
            "auth.public_key_file",
            "auth.algorithms",
            "auth.leeway_seconds",
            "auth.issuer",
            "auth.audience",
            "limits.max_message_chars",
            "limits.max_event_bytes",
            "limits.idempotency_window_seconds",
            "history.size",
            "history.ttl_seconds",
            "log.level",
            "log.format",
        ] {
            assert!(keys.contains(&k.to_string()), "{k} missing from {keys:?}");
        }
        assert_eq!(
            Config::env_var("relay.socket_mode"),
            "CHATUP_RELAY_SOCKET_MODE"
        );
        assert!(keys_help().contains("CHATUP_AUTH_ALGORITHMS"));
    }

    #[test]
    fn layers_apply_in_order_flag_env_file_default() {
        let f = file(
            "[http]\nlisten = \"127.0.0.1:8000\"\n[history]\nsize = 7\nttl_seconds = 60\n\
             [auth]\nissuer = \"file\"\n",
        );
        let e = env(&[
            ("CHATUP_HISTORY_SIZE", "8"),
            ("CHATUP_AUTH_ISSUER", "env"),
            ("PATH", "/bin"),
        ]);
        let sets = vec!["auth.issuer=flag".to_string()];
        let c = Config::load(Some(f.path()), e, &sets).unwrap().config;
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8000"); // file
        assert_eq!(c.history.ttl_seconds, 60); // file
        assert_eq!(c.history.size, 8); // env beats file
        assert_eq!(c.auth.issuer, "flag"); // flag beats env
        assert_eq!(c.auth.leeway_seconds, 5); // default
    }

    #[test]
    fn lists_from_env_are_comma_separated() {
        let c = Config::load(
            None,
            env(&[("CHATUP_AUTH_ALGORITHMS", "RS256, RS512,PS256")]),
            &[],
        )
        .unwrap()
        .config;
        assert_eq!(
            c.auth.algorithms,
            vec![Algorithm::RS256, Algorithm::RS512, Algorithm::PS256]
        );
    }

    #[test]
    fn lists_and_strings_may_be_written_as_in_toml() {
        let sets = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Config::load(None, env(&[]), &sets).map(|l| l.config)
        };
        let c = sets(&[r#"dispatch.cors_origins=["*"]"#, r#"host.id="chat-1""#]).unwrap();
        assert_eq!(c.dispatch.cors_origins, vec!["*".to_owned()]);
        assert_eq!(c.host.id, "chat-1");
        let c =
            sets(&[r#"dispatch.cors_origins=["https://a.example", "https://b.example"]"#]).unwrap();
        assert_eq!(c.dispatch.cors_origins.len(), 2);
        // The comma-separated form still works.
        let c = sets(&["dispatch.cors_origins=https://a.example,https://b.example"]).unwrap();
        assert_eq!(c.dispatch.cors_origins[1], "https://b.example");
        let c = Config::load(
            None,
            env(&[("CHATUP_AUTH_ALGORITHMS", r#"["RS256", "RS512"]"#)]),
            &[],
        )
        .unwrap()
        .config;
        assert_eq!(c.auth.algorithms, vec![Algorithm::RS256, Algorithm::RS512]);
        for (bad, needle) in [
            (r#"dispatch.cors_origins=["*""#, "not a TOML value"),
            (r#"host.id="a" "b""#, "not a TOML value"),
        ] {
            let msg = sets(&[bad]).unwrap_err().to_string();
            assert!(msg.contains(needle), "{bad}: {msg}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let f = file("[relay]\nsockett = \"/x\"\n");
        let err = Config::load(Some(f.path()), env(&[]), &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`relay.sockett`"), "{msg}");
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        assert!(msg.contains("relay.socket,"), "{msg}");

        let f = file("[nope]\nx = 1\n");
        let msg = Config::load(Some(f.path()), env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`nope`"), "{msg}");

        let msg = Config::load(None, env(&[]), &["http.port=1".into()])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`http.port`") && msg.contains("--set"),
            "{msg}"
        );

        let msg = Config::load(None, env(&[]), &["http=1".into()])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`http`"), "{msg}");

        let msg = Config::load(None, env(&[]), &["no-equals-sign".into()])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("section.key=value"), "{msg}");
    }

    #[test]
    fn unknown_env_vars_only_warn() {
        let loaded = Config::load(None, env(&[("CHATUP_HTTP_LISTN", "x")]), &[]).unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("CHATUP_HTTP_LISTN"));
    }

    #[test]
    fn the_old_chat_host_key_still_works_and_warns_once() {
        let f = file("[roles]\nworker = false\n[redis]\nurl = \"redis://127.0.0.1:1\"\n");
        let loaded = Config::load(Some(f.path()), env(&[]), &[]).unwrap();
        assert!(!loaded.config.roles.chat_host);
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("`roles.worker`"));
        assert!(loaded.warnings[0].contains("`roles.chat_host`"));
        assert!(loaded.warnings[0].contains("CHATUP_ROLES_CHAT_HOST"));

        // In every layer, and given twice it still warns once.
        let loaded = Config::load(
            Some(f.path()),
            env(&[("CHATUP_ROLES_WORKER", "false")]),
            &["roles.worker=false".into()],
        )
        .unwrap();
        assert!(!loaded.config.roles.chat_host);
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("--set"));

        let loaded = Config::load(None, env(&[("CHATUP_ROLES_WORKER", "true")]), &[]).unwrap();
        assert!(loaded.config.roles.chat_host);
        assert!(loaded.warnings[0].contains("CHATUP_ROLES_WORKER"));

        let msg = Config::load(None, env(&[("CHATUP_ROLES_WORKER", "maybe")]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("roles.worker") && msg.contains("true or false"),
            "{msg}"
        );
        assert!(!Config::keys().contains(&"roles.worker".to_string()));
    }

    #[test]
    fn the_new_chat_host_key_works_without_warning() {
        let redis = "redis.url=redis://127.0.0.1:1".to_string();
        let loaded =
            Config::load(None, env(&[]), &["roles.chat_host=false".into(), redis]).unwrap();
        assert!(!loaded.config.roles.chat_host);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let f = file("[roles]\nchat_host = false\n[redis]\nurl = \"redis://127.0.0.1:1\"\n");
        let loaded = Config::load(Some(f.path()), env(&[]), &[]).unwrap();
        assert!(!loaded.config.roles.chat_host);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let loaded = Config::load(None, env(&[("CHATUP_ROLES_CHAT_HOST", "true")]), &[]).unwrap();
        assert!(loaded.config.roles.chat_host);
        assert!(Config::keys().contains(&"roles.chat_host".to_string()));
    }

    #[test]
    fn old_and_new_chat_host_keys_in_conflict_are_an_error() {
        let f = file("[roles]\nworker = false\n");
        let msg = Config::load(
            Some(f.path()),
            env(&[("CHATUP_ROLES_CHAT_HOST", "true")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("`roles.worker`"), "{msg}");
        assert!(msg.contains("`roles.chat_host`"), "{msg}");
        assert!(
            msg.contains("environment variable CHATUP_ROLES_CHAT_HOST"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("config file {}", f.path().display())),
            "{msg}"
        );

        let f = file("[roles]\nworker = true\nchat_host = false\n");
        let msg = Config::load(Some(f.path()), env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("roles.worker") && msg.contains("roles.chat_host"),
            "{msg}"
        );

        // The same value under both names is no conflict, only the old name's warning.
        let loaded = Config::load(
            None,
            env(&[]),
            &["roles.worker=true".into(), "roles.chat_host=true".into()],
        )
        .unwrap();
        assert!(loaded.config.roles.chat_host);
        assert_eq!(loaded.warnings.len(), 1);
    }

    #[test]
    fn type_errors_name_key_and_origin() {
        let f = file("[history]\nsize = \"many\"\n");
        let msg = Config::load(Some(f.path()), env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`history.size`") && msg.contains("an integer"),
            "{msg}"
        );

        let msg = Config::load(None, env(&[("CHATUP_HISTORY_SIZE", "lots")]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("history.size") && msg.contains("CHATUP_HISTORY_SIZE"),
            "{msg}"
        );

        let msg = Config::load(None, env(&[]), &["http.listen=nowhere".into()])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("http.listen"), "{msg}");

        let msg = Config::load(None, env(&[]), &["history.size=-1".into()])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("history.size"), "{msg}");

        let msg = Config::load(None, env(&[]), &["auth.algorithms=RS257".into()])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("auth.algorithms") && msg.contains("RS257"),
            "{msg}"
        );

        let msg = Config::load(None, env(&[]), &["relay.socket_mode=999".into()])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("relay.socket_mode") && msg.contains("octal"),
            "{msg}"
        );
    }

    #[test]
    fn missing_or_broken_file_is_a_clear_error() {
        let msg = Config::load(Some(Path::new("/nonexistent/c.toml")), env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("/nonexistent/c.toml"), "{msg}");
        let f = file("[relay\n");
        let msg = Config::load(Some(f.path()), env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not valid TOML"), "{msg}");
    }

    #[test]
    fn printed_config_loads_back_identically() {
        let c = Config::load(
            None,
            env(&[]),
            &["relay.socket_mode=0600".into(), "log.format=json".into()],
        )
        .unwrap()
        .config;
        let printed = c.to_toml();
        assert!(printed.contains("socket_mode = \"0600\""), "{printed}");
        let f = file(&printed);
        let again = Config::load(Some(f.path()), env(&[]), &[]).unwrap().config;
        assert_eq!(again, c);
    }
}
