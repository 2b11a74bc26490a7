//! The node program's topic commands, on gossip: `/sub TOPIC` prints every publication of the
//! topic as `[TOPIC] ORIGIN_ID: TEXT` (the publisher's id, not the relay's), `/unsub TOPIC`,
//! `/relay TOPIC` carries a topic without printing it (a node between publishers and
//! subscribers), `/pub TOPIC TEXT` publishes, `/stats TOPIC` prints the topic's counters. Spawns one printing task per subscription.

use std::collections::HashMap;

use bytes::Bytes;
use peerwire::protocols::gossip::{Gossip, Topic};
use peerwire::{ChannelSpec, Config, Network};
use tokio::task::JoinHandle;

use super::text::printable;

/// The channel gossip travels on.
const GOSSIP_CHANNEL: u16 = 2;

/// Adds gossip's channel to the node's configuration.
pub(crate) fn declare(config: Config) -> Config {
    config.channel(GOSSIP_CHANNEL, ChannelSpec::normal())
}

/// Gossip and the node's subscriptions.
pub(crate) struct PubSub {
    gossip: Gossip,
    printers: HashMap<String, JoinHandle<()>>,
}

impl PubSub {
    pub(crate) fn start(net: &Network<Bytes>) -> super::Result<Self> {
        Ok(Self {
            gossip: net.gossip(GOSSIP_CHANNEL)?,
            printers: HashMap::new(),
        })
    }

    /// Runs one `/` command line; returns false if it is not a topic command.
    pub(crate) fn command(&mut self, line: &str) -> bool {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("/sub"), Some(topic), None) => self.subscribe(topic.trim()),
            (Some("/unsub"), Some(topic), None) => {
                let topic = topic.trim();
                if let Some(printer) = self.printers.remove(topic) {
                    printer.abort();
                }
                self.gossip.unsubscribe(topic);
                println!("left {topic}");
            }
            (Some("/relay"), Some(topic), None) => match self.gossip.relay(topic.trim()) {
                Ok(()) => println!("relaying {}", topic.trim()),
                Err(e) => println!("/relay {topic}: {e}"),
            },
            (Some("/pub"), Some(topic), Some(text)) => {
                match self
                    .gossip
                    .publish(topic, &Bytes::copy_from_slice(text.as_bytes()))
                {
                    Ok(id) => tracing::debug!(%id, "published on {topic}"),
                    Err(e) => println!("/pub {topic}: {e}"),
                }
            }
            (Some("/stats"), Some(topic), None) => match self.gossip.stats(topic.trim()) {
                Some(s) => {
                    let (eager, lazy) = self.gossip.links(topic.trim());
                    println!(
                        "stats {}: eager={} lazy={} published={} received={} delivered={} \
                     duplicates={} announced={} repairs={} parent_changes={} eager_bytes={} \
                     lazy_bytes={} dropped={} sources_refused={}",
                        topic.trim(),
                        eager,
                        lazy,
                        s.published,
                        s.received,
                        s.delivered,
                        s.duplicates,
                        s.announced,
                        s.repairs,
                        s.parent_changes,
                        s.eager_bytes,
                        s.lazy_bytes,
                        s.dropped,
                        s.sources_refused
                    );
                }
                None => println!("/stats {topic}: not joined"),
            },
            (Some("/sub" | "/unsub" | "/relay" | "/pub" | "/stats"), _, _) => {
                println!("{}", usage())
            }
            _ => return false,
        }
        true
    }

    fn subscribe(&mut self, topic: &str) {
        match self.gossip.subscribe::<Bytes>(topic) {
            Ok(subscription) => {
                let printer = tokio::spawn(print(subscription));
                self.printers.insert(topic.to_owned(), printer);
                println!("subscribed to {topic}");
            }
            Err(e) => println!("/sub {topic}: {e}"),
        }
    }

    /// Ends the subscriptions (before the network shuts down).
    pub(crate) async fn stop(mut self) {
        for (_, printer) in self.printers.drain() {
            printer.abort();
            let _ = printer.await;
        }
    }
}

pub(crate) fn usage() -> &'static str {
    "/sub TOPIC, /unsub TOPIC, /relay TOPIC, /pub TOPIC TEXT, /stats TOPIC"
}

/// Prints every publication of one topic, and accepts it (so it is forwarded on).
async fn print(mut topic: Topic<Bytes>) {
    while let Some(message) = topic.recv().await {
        println!(
            "[{}] {}: {}",
            printable(topic.name().as_bytes()),
            message.origin,
            printable(&message.payload)
        );
        message.accept();
    }
}
