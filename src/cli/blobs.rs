//! The node program's blob commands, on the swarm: `/share PATH` holds a file as a blob and
//! prints its id, `/fetch BLOB_ID PATH` gets it from the connected peers (a progress bar on a
//! terminal, every piece checked against the id) and writes it, `/push BLOB_ID [PEER...]`
//! spreads it to the named peers or every connected one, `/blobs` lists what is held. Blobs pushed by a peer are taken and
//! announced; `/fetch` writes them out at once. Each command runs in its own task, so a long
//! fetch never blocks the prompt.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use peerwire::Network;
use peerwire::protocols::swarm::{BlobId, Swarm, SwarmConfig, SwarmEvent};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Announcements and requests.
const CONTROL_CHANNEL: u16 = 5;
/// Pieces (bulk priority).
const PIECES_CHANNEL: u16 = 6;

fn swarm_config() -> SwarmConfig {
    SwarmConfig::new(CONTROL_CHANNEL, PIECES_CHANNEL)
}

/// Adds the swarm's channels to the node's configuration.
pub(crate) fn declare(config: peerwire::Config) -> peerwire::Config {
    swarm_config().declare(config)
}

/// The swarm and the tasks of running commands.
pub(crate) struct Blobs {
    swarm: Swarm,
    net: Network<Bytes>,
    tasks: JoinSet<()>,
    stop: CancellationToken,
}

impl Blobs {
    pub(crate) fn start(net: &Network<Bytes>, corrupt: bool) -> super::Result<Self> {
        let mut config = swarm_config();
        if corrupt {
            tracing::warn!("--swarm-test-corrupt: every piece this node uploads is corrupted");
            config = config.corrupt_uploads_for_tests();
        }
        let swarm = net.swarm(config)?;
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(print_events(swarm.clone(), stop.clone()));
        Ok(Self {
            swarm,
            net: net.clone(),
            tasks,
            stop,
        })
    }

    /// Runs one `/` command line; returns false if it is not a blob command.
    pub(crate) fn command(&mut self, line: &str) -> bool {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("/share"), Some(_), _, _) => {
                let path = PathBuf::from(line.trim()["/share".len()..].trim());
                let swarm = self.swarm.clone();
                self.tasks.spawn(async move {
                    match swarm.add_file(&path).await {
                        Ok(blob) => {
                            let len = swarm.progress(&blob).map_or(0, |p| p.len);
                            println!("shared {} as {blob} ({len} bytes)", path.display());
                        }
                        Err(e) => println!("/share {}: {e}", path.display()),
                    }
                });
            }
            (Some("/fetch"), Some(id), Some(path), None) => match id.parse::<BlobId>() {
                Ok(blob) => {
                    let hints = connected(&self.net);
                    self.tasks.spawn(fetch(
                        self.swarm.clone(),
                        blob,
                        hints,
                        PathBuf::from(path),
                        self.stop.clone(),
                    ));
                }
                Err(e) => println!("/fetch {id}: {e}"),
            },
            (Some("/push"), Some(id), _, _) => match id.parse::<BlobId>() {
                Ok(blob) => {
                    // Named peers, or every connected one.
                    let named: Result<Vec<peerwire::PeerId>, _> =
                        line.split_whitespace().skip(2).map(str::parse).collect();
                    let receivers = match named {
                        Ok(named) if !named.is_empty() => named,
                        Ok(_) => connected(&self.net),
                        Err(e) => {
                            println!("/push {id}: a receiver is not a peer id ({e})");
                            return true;
                        }
                    };
                    let swarm = self.swarm.clone();
                    self.tasks.spawn(async move {
                        println!("pushing {blob} to {} peers", receivers.len());
                        match swarm.push(&blob, &receivers).await {
                            Ok(report) => {
                                let p = swarm.progress(&blob).unwrap_or_default();
                                println!(
                                    "pushed {blob}: {} peers hold it, {} failed, {} refused for bad pieces; {} bytes sent ({:.2} copies)",
                                    report.completed.len(),
                                    report.failed.len(),
                                    report.refused.len(),
                                    p.uploaded_bytes,
                                    p.uploaded_bytes as f64 / p.len.max(1) as f64
                                );
                            }
                            Err(e) => println!("/push {blob}: {e}"),
                        }
                    });
                }
                Err(e) => println!("/push {id}: {e}"),
            },
            (Some("/blobs"), None, _, _) => {
                let blobs = self.swarm.blobs();
                if blobs.is_empty() {
                    println!("no blobs");
                }
                for (blob, p) in blobs {
                    println!(
                        "{blob} {} bytes, {}/{} pieces, {} members, {} bytes sent, {} received, {} duplicate, {} bad pieces",
                        p.len,
                        p.pieces,
                        p.total,
                        p.members,
                        p.uploaded_bytes,
                        p.received_bytes,
                        p.duplicate_bytes,
                        p.bad_pieces
                    );
                }
            }
            (Some("/share" | "/fetch" | "/push"), _, _, _) => println!("{}", usage()),
            _ => return false,
        }
        true
    }

    /// Stops running commands (call before the network shuts down).
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

pub(crate) fn usage() -> &'static str {
    "blobs: /share PATH, /fetch BLOB_ID PATH, /push BLOB_ID [PEER...], /blobs"
}

async fn fetch(
    swarm: Swarm,
    blob: BlobId,
    hints: Vec<peerwire::PeerId>,
    path: PathBuf,
    stop: CancellationToken,
) {
    let bar = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("fetching {}", &blob.to_string()[..12]));
    let watch = show_progress(swarm.clone(), blob, bar.clone());
    let result = tokio::select! {
        result = swarm.fetch(&blob, &hints) => result,
        () = watch => return,
        () = stop.cancelled() => return,
    };
    bar.finish_and_clear();
    let data = match result {
        Ok(data) => data,
        Err(e) => {
            println!("/fetch {blob}: {e}");
            return;
        }
    };
    // Written beside the target and renamed: a crash never leaves half a file under the name.
    let partial = path.with_extension("partial");
    let written = match tokio::fs::write(&partial, &data).await {
        Ok(()) => tokio::fs::rename(&partial, &path).await,
        Err(e) => Err(e),
    };
    match written {
        Ok(()) => println!(
            "fetched {blob} to {} ({} bytes, verified)",
            path.display(),
            data.len()
        ),
        Err(e) => println!("/fetch {blob}: cannot write {}: {e}", path.display()),
    }
}

/// Moves the bar with the blob's progress, until dropped.
async fn show_progress(swarm: Swarm, blob: BlobId, bar: ProgressBar) {
    loop {
        if let Some(p) = swarm.progress(&blob) {
            bar.set_length(p.len);
            bar.set_position(p.received_bytes.min(p.len));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn print_events(swarm: Swarm, stop: CancellationToken) {
    let mut events = swarm.events();
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = stop.cancelled() => return,
        };
        match event {
            Ok(SwarmEvent::Offered { blob, from, len }) => {
                println!("receiving {blob} ({len} bytes) pushed by {from}");
            }
            Ok(SwarmEvent::Complete { blob }) => println!("blob {blob} complete"),
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

fn connected(net: &Network<Bytes>) -> Vec<peerwire::PeerId> {
    net.peers().into_iter().filter_map(|p| p.peer).collect()
}
