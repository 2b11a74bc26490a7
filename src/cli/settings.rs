//! Every library setting by name, for the program's config file (`--config node.toml`, table
//! `[network]`), its environment variables (`PEERWIRE_<NAME>`) and `peerwire init`, which writes
//! them all with their defaults and what they mean.
//!
//! One table drives the three: a setting is parsed from text the same way wherever it comes
//! from, so a value that works in the file works in the environment too.

use std::net::SocketAddr;
use std::time::Duration;

use peerwire::Config;

/// How a setting's value is written and read.
pub(crate) trait Value: Sized {
    /// Parses the text form (`10s`, `250ms`, `16777216`, `true`, `127.0.0.1:7001`).
    fn parse(text: &str) -> Result<Self, String>;
    /// The form `peerwire init` writes, as a TOML value.
    fn toml(&self) -> String;
}

/// Whole numbers, with `_` allowed as a separator (`16_777_216`).
macro_rules! whole_number {
    ($($t:ty),*) => { $(
        impl Value for $t {
            fn parse(text: &str) -> Result<Self, String> {
                text.trim().replace('_', "").parse().map_err(|_| {
                    format!("{text:?} is not a whole number from 0 to {}", <$t>::MAX)
                })
            }
            fn toml(&self) -> String {
                self.to_string()
            }
        }
    )* };
}

whole_number!(usize, u64, u32);

impl Value for bool {
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(format!("{text:?} is not true or false")),
        }
    }
    fn toml(&self) -> String {
        self.to_string()
    }
}

impl Value for Duration {
    /// A number with a unit (`ms`, `s`, `m`, `h`), or a bare number of seconds; fractions
    /// allowed (`1.5s`, `0.25`).
    fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let expected = "expected a duration such as 250ms, 10s, 1.5m or 1h";
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{text:?}: {expected}"))?;
        let scale = match unit.trim() {
            "ms" => 0.001,
            "" | "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("{text:?}: unknown unit; {expected}")),
        };
        Self::try_from_secs_f64(number * scale).map_err(|e| format!("{text:?}: {e}"))
    }
    fn toml(&self) -> String {
        let ms = self.as_millis();
        if ms % 1000 == 0 {
            format!("\"{}s\"", ms / 1000)
        } else {
            format!("\"{ms}ms\"")
        }
    }
}

impl Value for String {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
    fn toml(&self) -> String {
        format!("{self:?}")
    }
}

impl Value for Option<SocketAddr> {
    fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        text.trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{text:?} is not an address such as 203.0.113.7:7001"))
    }
    fn toml(&self) -> String {
        self.map_or_else(|| "\"\"".to_owned(), |a| format!("\"{a}\""))
    }
}

impl Value for Option<std::net::IpAddr> {
    fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        text.trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{text:?} is not an IP address such as 203.0.113.7"))
    }
    fn toml(&self) -> String {
        self.map_or_else(|| "\"\"".to_owned(), |a| format!("\"{a}\""))
    }
}

impl Value for Option<std::path::PathBuf> {
    fn parse(text: &str) -> Result<Self, String> {
        Ok((!text.trim().is_empty()).then(|| std::path::PathBuf::from(text.trim())))
    }
    fn toml(&self) -> String {
        self.as_ref().map_or_else(
            || "\"\"".to_owned(),
            |p| format!("{:?}", p.display().to_string()),
        )
    }
}

/// One setting: its name (the file's key; `PEERWIRE_` + upper case for the environment) and
/// what it means.
pub(crate) struct Setting {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
    apply: fn(&mut Config, &str) -> Result<(), String>,
    show: fn(&Config) -> String,
}

impl Setting {
    /// The environment variable that sets it.
    pub(crate) fn env_var(&self) -> String {
        format!("PEERWIRE_{}", self.name.to_ascii_uppercase())
    }
}

macro_rules! settings {
    ($( $name:ident $(. $sub:ident)* : $ty:ty = $help:literal ),* $(,)?) => {
        /// Every library setting the program exposes, in the order `peerwire init` writes them.
        pub(crate) const SETTINGS: &[Setting] = &[ $(
            Setting {
                name: settings!(@name $name $(. $sub)*),
                help: $help,
                apply: |config, text| {
                    config.$name $(. $sub)* = <$ty as Value>::parse(text)?;
                    Ok(())
                },
                show: |config| <$ty as Value>::toml(&config.$name $(. $sub)*),
            },
        )* ];
    };
    (@name $name:ident) => { stringify!($name) };
    (@name $name:ident . $sub:ident) => { concat!(stringify!($name), "_", stringify!($sub)) };
}

settings! {
    advertised_addr: Option<SocketAddr> = "Address peers should dial this node at, if not the listen address (behind NAT). Empty: the bound address.",
    dial_from: Option<std::net::IpAddr> = "Local address outbound connections are made from (a host with several addresses). Empty: the OS chooses.",
    data_dir: Option<std::path::PathBuf> = "Directory where the node keeps what it knows across its restart (address book, anchors, registry list, application entries). Empty: nothing is kept.",
    read_chunk_size: usize = "Bytes asked of the kernel per read.",
    max_message_size: usize = "Largest encoded application message, sent or received, in bytes.",
    send_queue_capacity: usize = "Messages waiting per peer before a send waits or reports Full.",
    send_queue_bytes: usize = "Bytes waiting per peer before the queue counts as full.",
    inbox_capacity: usize = "Messages waiting for the application; beyond it new ones are dropped and counted.",
    inbox_bytes: usize = "Bytes waiting for the application; same policy.",
    event_capacity: usize = "Connection events buffered per subscriber.",
    max_inbound: usize = "Open inbound connections from peers that are not persistent peers.",
    max_inbound_per_ip: usize = "Authenticated inbound connections from one IP address at once.",
    max_handshakes_per_ip: usize = "Inbound connections from one IP still in their handshake; a new one takes the place of the oldest silent one.",
    max_handshakes_per_ip_per_sec: u64 = "New inbound connections per second from one IP (burst the same); 0 means unlimited.",
    max_outbound: usize = "Outbound connections at once (persistent peers not counted).",
    max_concurrent_handshakes: usize = "Handshakes running at once; others wait for a slot.",
    handshake_timeout: Duration = "Time allowed for the handshake of a dial we make.",
    inbound_handshake_timeout: Duration = "Time allowed for the handshake of an inbound connection.",
    connect_timeout: Duration = "Time allowed for a TCP dial.",
    write_timeout: Duration = "A peer that accepts no bytes, or whose queue stays full, this long is disconnected.",
    shutdown_timeout: Duration = "Time shutdown gives connections to flush and say goodbye.",
    misbehaviour_budget: u32 = "Misbehaviour points a peer may accumulate on a connection before it is closed and banned.",
    write_batch_bytes: usize = "Bytes gathered per write call.",
    ping_interval: Duration = "How often each connection sends a ping.",
    idle_timeout: Duration = "A connection on which nothing arrives this long is closed; must exceed ping_interval.",
    backoff.base: Duration = "Redial schedule of persistent peers: first delay.",
    backoff.cap: Duration = "Redial schedule of persistent peers: largest delay.",
    backoff.jitter_permille: u32 = "Redial schedule of persistent peers: jitter, per mille of the delay (0..=1000).",
    offline_queue_capacity: usize = "Per persistent peer: messages accepted and not yet acknowledged.",
    offline_queue_bytes: usize = "Per persistent peer: bytes of those messages.",
    ban_duration: Duration = "How long a misbehaving peer (and its IP, unless persistent) stays banned.",
    max_inbound_messages_per_sec: u64 = "Per connection: application messages per second (burst one second); 0 means unlimited.",
    max_inbound_bytes_per_sec: u64 = "Per connection: encoded bytes per second; 0 means unlimited.",
    max_inbound_messages_per_sec_per_ip: u64 = "Per remote address, all its connections together: messages per second; 0 means unlimited.",
    max_reassembly_bytes: usize = "Node-wide: bytes of partly received large messages held at once.",
    send_wait: Duration = "Longest a waiting send waits for room for one peer.",
    max_stalls_per_ip: u32 = "Stalled connections from one IP within stall_window before it is banned; 0 disables.",
    stall_window: Duration = "The window of max_stalls_per_ip.",
    tcp_notsent_lowat: u32 = "Bytes the kernel may hold unsent per connection (Linux); 0 leaves the kernel default.",
    deliver_to_self: bool = "Whether the default channel also delivers this node's own sends and broadcasts to itself.",
}

/// Sets `name` on `config` from `text`; `source` names where the value came from, for the
/// message.
pub(crate) fn apply(
    config: &mut Config,
    name: &str,
    text: &str,
    source: &str,
) -> Result<(), String> {
    let setting = SETTINGS.iter().find(|s| s.name == name).ok_or_else(|| {
        format!(
            "{source}: unknown setting {name:?}; `peerwire init --config FILE` writes every \
             setting with its default"
        )
    })?;
    (setting.apply)(config, text).map_err(|e| format!("{source}: {name}: {e}"))
}

/// Applies every `PEERWIRE_<NAME>` variable that is set.
pub(crate) fn apply_env(config: &mut Config) -> Result<(), String> {
    for setting in SETTINGS {
        let var = setting.env_var();
        match std::env::var(&var) {
            Ok(text) => apply(config, setting.name, &text, &var)?,
            Err(std::env::VarError::NotPresent) => {}
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(format!("{var}: not valid UTF-8"));
            }
        }
    }
    Ok(())
}

/// Every setting's value in `config`, one `name = value` line each.
pub(crate) fn current_network_table(config: &Config) -> String {
    SETTINGS
        .iter()
        .map(|s| format!("{} = {}\n", s.name, (s.show)(config)))
        .collect()
}

/// The `[network]` table `peerwire init` writes: every setting at its default, each with its
/// meaning and its environment variable.
pub(crate) fn default_network_table() -> String {
    let defaults = Config::default();
    let mut out = String::new();
    for setting in SETTINGS {
        out.push_str(&format!(
            "# {} (env {})\n{} = {}\n\n",
            setting.help,
            setting.env_var(),
            setting.name,
            (setting.show)(&defaults)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_fractions_and_refuse_the_rest() {
        assert_eq!(Duration::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(Duration::parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(Duration::parse("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(Duration::parse("2"), Ok(Duration::from_secs(2)));
        assert_eq!(Duration::parse("1h"), Ok(Duration::from_secs(3600)));
        assert!(Duration::parse("10 parsecs").is_err());
        assert!(Duration::parse("-1s").is_err());
        assert!(Duration::parse("").is_err());
        assert_eq!(Duration::from_millis(1500).toml(), "\"1500ms\"");
    }

    #[test]
    fn every_default_written_by_init_reads_back_as_the_default() {
        let defaults = Config::default();
        let mut read = Config::default();
        // Perturb first, so that reading the defaults back has something to undo.
        read.max_message_size = 1;
        read.backoff.cap = Duration::from_secs(1);
        read.deliver_to_self = !defaults.deliver_to_self;
        for setting in SETTINGS {
            let text = (setting.show)(&defaults);
            let text = text.trim_matches('"');
            apply(&mut read, setting.name, text, "test").unwrap();
            assert_eq!(
                (setting.show)(&read),
                (setting.show)(&defaults),
                "{}",
                setting.name
            );
        }
        assert_eq!(read.max_message_size, defaults.max_message_size);
        assert_eq!(read.backoff, defaults.backoff);
    }

    #[test]
    fn an_unknown_setting_or_bad_value_names_itself_and_its_source() {
        let mut config = Config::default();
        let e = apply(&mut config, "max_mesage_size", "1", "node.toml").unwrap_err();
        assert!(
            e.contains("node.toml") && e.contains("max_mesage_size"),
            "{e}"
        );
        let e = apply(&mut config, "idle_timeout", "soon", "PEERWIRE_IDLE_TIMEOUT").unwrap_err();
        assert!(e.starts_with("PEERWIRE_IDLE_TIMEOUT: idle_timeout:"), "{e}");
        apply(&mut config, "backoff_cap", "30s", "x").unwrap();
        assert_eq!(config.backoff.cap, Duration::from_secs(30));
    }
}
