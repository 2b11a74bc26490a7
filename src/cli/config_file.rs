//! `peerwire node --config node.toml`: the node's file. `[node]` holds the program's own
//! options (the same as its flags), `[network]` every library setting by name (`settings.rs`).
//! Precedence, lowest first: defaults, this file, `PEERWIRE_*` environment variables, flags.

use std::path::{Path, PathBuf};

use peerwire::Config;
use serde::Deserialize;

use super::settings;

/// Largest config file read; a config is a few KiB, and anything far larger is a mistake.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The program's own options, as the flags of `peerwire node` (each optional here).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeSection {
    pub(crate) listen: Option<String>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) network_id: Option<String>,
    pub(crate) peers: Option<Vec<String>>,
    pub(crate) persistent: Option<Vec<String>>,
    pub(crate) durable: Option<Vec<String>>,
    pub(crate) metrics: Option<String>,
    pub(crate) discover: Option<bool>,
    pub(crate) registry: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) compat: Option<u64>,
    pub(crate) log_level: Option<String>,
    pub(crate) log_format: Option<String>,
}

/// A parsed config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub(crate) node: NodeSection,
    #[serde(default)]
    network: toml::Table,
}

impl ConfigFile {
    /// Parses the text of a config file; errors say where (line and column) and what.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// Reads and parses `path`; every error names the file and says what to do.
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| {
            format!("--config {shown}: {e}; `peerwire init --config {shown}` writes a default one")
        })?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(format!(
                "--config {shown}: {} bytes; a config file is at most 1 MiB",
                meta.len()
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--config {shown}: {e} (expected a UTF-8 TOML file)"))?;
        Self::parse(&text).map_err(|e| format!("--config {shown}: {e}"))
    }

    /// Sets every `[network]` entry on `config`; `source` names the file for messages.
    pub(crate) fn apply_network(&self, config: &mut Config, source: &str) -> Result<(), String> {
        for (name, value) in &self.network {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "{source}: [network] {name}: a {}, expected a number, string or boolean",
                        other.type_str()
                    ));
                }
            };
            settings::apply(config, name, &text, &format!("{source}: [network]"))?;
        }
        Ok(())
    }
}

/// The file `peerwire init` writes: every option, the program's commented out, the library's
/// at their defaults.
pub(crate) fn template() -> String {
    format!(
        "# peerwire node configuration: `peerwire node --config FILE`.\n\
         # Precedence, lowest first: defaults, this file, PEERWIRE_* environment variables, flags.\n\
         \n\
         [node]\n\
         # Address to listen on (port 0 picks a free one). Env PEERWIRE_LISTEN.\n\
         # listen = \"0.0.0.0:7001\"\n\
         # Key file holding this node's identity (created with mode 0600 if missing). Env PEERWIRE_KEY.\n\
         # key = \"/var/lib/peerwire/node.key\"\n\
         # Network id; nodes with another id refuse each other. Env PEERWIRE_NETWORK_ID.\n\
         # network_id = \"peerwire\"\n\
         # Peers to dial and keep dialing, HOST:PORT. Env PEERWIRE_PEERS (comma-separated).\n\
         # peers = [\"node-b.example:7001\"]\n\
         # Peers to stay connected to with their identity checked, ID@HOST:PORT\n\
         # (`peerwire id --key FILE --listen ADDR` prints it). Env PEERWIRE_PERSISTENT.\n\
         # persistent = []\n\
         # Persistent peers whose messages are kept in data_dir and survive this node's crash,\n\
         # ID@HOST:PORT. Env PEERWIRE_DURABLE.\n\
         # durable = []\n\
         # Serve Prometheus metrics (/metrics) and /healthz here. Env PEERWIRE_METRICS.\n\
         # metrics = \"127.0.0.1:9100\"\n\
         # Find other nodes through connected ones (peer exchange). Env PEERWIRE_DISCOVER.\n\
         # discover = false\n\
         # A registry to register with, ID@HOST:PORT (`peerwire registry` prints it). Env\n\
         # PEERWIRE_REGISTRY.\n\
         # registry = \"<id>@registry.example:7000\"\n\
         # The name to register under, unique in the registry. Env PEERWIRE_NAME.\n\
         # name = \"node-a\"\n\
         # The application's compatibility value; the registry refuses another one. Env\n\
         # PEERWIRE_COMPAT.\n\
         # compat = 0\n\
         # Log filter: a level (error, warn, info, debug, trace) or RUST_LOG-style directives.\n\
         # Env PEERWIRE_LOG_LEVEL; RUST_LOG is used when neither is set.\n\
         # log_level = \"info\"\n\
         # text or json. Env PEERWIRE_LOG_FORMAT.\n\
         # log_format = \"text\"\n\
         \n\
         [network]\n\
         # Every library setting, at its default.\n\
         \n\
         {}",
        settings::default_network_table()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_template_parses_and_sets_every_default() {
        let file = ConfigFile::parse(&template()).unwrap();
        let mut config = Config::default();
        config.idle_timeout = Duration::from_secs(1);
        file.apply_network(&mut config, "template").unwrap();
        assert_eq!(config.idle_timeout, Config::default().idle_timeout);
        assert!(file.node.listen.is_none());
    }

    #[test]
    fn sections_values_and_mistakes() {
        let file = ConfigFile::parse(
            "[node]\nlisten = \"127.0.0.1:7001\"\npeers = [\"a:1\", \"b:2\"]\n\
             [network]\nidle_timeout = \"30s\"\nmax_message_size = 1_048_576\ndeliver_to_self = true\n",
        )
        .unwrap();
        assert_eq!(file.node.peers.as_deref().map(<[String]>::len), Some(2));
        let mut config = Config::default();
        file.apply_network(&mut config, "node.toml").unwrap();
        assert_eq!(config.idle_timeout, Duration::from_secs(30));
        assert_eq!(config.max_message_size, 1 << 20);
        assert!(config.deliver_to_self);
        // A misspelt key, in either section, is an error that names it.
        let e = ConfigFile::parse("[node]\nlisen = \"x\"\n").unwrap_err();
        assert!(e.contains("lisen"), "{e}");
        let file = ConfigFile::parse("[network]\nidle_timeot = \"1s\"\n").unwrap();
        let e = file
            .apply_network(&mut Config::default(), "node.toml")
            .unwrap_err();
        assert!(e.contains("node.toml") && e.contains("idle_timeot"), "{e}");
        let file = ConfigFile::parse("[network]\nidle_timeout = [1]\n").unwrap();
        let e = file
            .apply_network(&mut Config::default(), "node.toml")
            .unwrap_err();
        assert!(e.contains("array"), "{e}");
        // Not TOML at all: the parser's message says where.
        assert!(ConfigFile::parse("[node\n").unwrap_err().contains("line 1"));
    }
}
