//! The journal ceiling: what the nats-server under test does for Berth's kind of write
//! (a publish with `Nats-Expected-Last-Subject-Sequence`) with nothing of Berth in the
//! way. It runs on a throwaway stream configured like `BERTH_STATE` (file storage,
//! per-subject history, direct gets, same replicas) on the same server(s), over 10,000
//! subjects of its own (`bench.ceiling.<n>`, outside Berth's subject space), with 200-byte
//! records; the stream is deleted afterwards. Every other figure is reported as a ratio
//! to these.

use crate::stats::{Percentiles, Samples};
use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, message::PublishMessage};
use berth_messages::streams::{self, StreamOptions, StreamSpec};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const STREAM: &str = "BERTH_BENCH_CEILING";
const SUBJECT_PREFIX: &str = "bench.ceiling";
/// Subjects the writes are spread over.
pub const SUBJECTS: usize = 10_000;
/// Size of each record.
pub const RECORD_BYTES: usize = 200;
/// Publishes awaiting their acknowledgement at once.
const WINDOW: usize = 4_096;

/// The ceiling measured in this run.
#[derive(Debug, Clone, Default)]
pub struct Ceiling {
    /// Pipelined conditional publishes per second.
    pub pipelined_rate: f64,
    pub pipelined_writes: usize,
    pub pipelined_elapsed: Duration,
    /// One conditional publish waited for.
    pub serial: Percentiles,
    /// Waited-for publishes per second, one at a time.
    pub serial_rate: f64,
}

fn subject(n: usize) -> String {
    format!("{SUBJECT_PREFIX}.{n}")
}

/// Measures both figures on `client`'s server(s); on a cluster, from a connection to the
/// server that leads the ceiling stream, as Berth's own processes connect to the one that
/// leads the state stream (`urls`: the servers).
pub async fn measure(
    client: &async_nats::Client,
    urls: &[String],
    replicas: usize,
    pipelined_writes: usize,
    serial_writes: usize,
) -> anyhow::Result<Ceiling> {
    let context = |client: &async_nats::Client| {
        jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(30))
            .max_ack_inflight(WINDOW + 1)
            .build(client.clone())
    };
    let js = context(client);
    let options = StreamOptions {
        replicas,
        ..StreamOptions::default()
    };
    let spec = StreamSpec {
        name: STREAM,
        subjects: vec![format!("{SUBJECT_PREFIX}.>")],
        ..streams::state(&options)
    };
    // A fresh 3-node cluster may still be electing its meta leader.
    let mut created = None;
    for _ in 0..40 {
        match js
            .create_or_update_stream(berth_journal::stream_config(&spec))
            .await
        {
            Ok(_) => {
                created = Some(());
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    created.context("cannot create the ceiling stream")?;
    // A new replicated stream may still be electing its leader.
    for _ in 0..40 {
        let mut stream = js.get_stream(STREAM).await?;
        let info = stream.info().await?;
        if replicas < 2 || info.cluster.as_ref().is_some_and(|c| c.leader.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let near = berth_journal::connect_leader_first(
        client,
        urls,
        STREAM,
        async_nats::ConnectOptions::new().name("berth-bench-ceiling"),
    )
    .await
    .transpose()
    .context("connecting to the ceiling stream's leader")?;
    let writer = near.as_ref().map_or_else(|| js.clone(), context);
    let result = run(&writer, pipelined_writes, serial_writes).await;
    if let Err(e) = js.delete_stream(STREAM).await {
        tracing::warn!(error = %e, "cannot delete the ceiling stream");
    }
    result
}

async fn run(
    js: &jetstream::Context,
    pipelined_writes: usize,
    serial_writes: usize,
) -> anyhow::Result<Ceiling> {
    let payload = Bytes::from(
        (0..RECORD_BYTES)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    let mut versions = vec![0u64; SUBJECTS];
    let subjects: Vec<String> = (0..SUBJECTS).map(subject).collect();

    // Warm up: create every subject once (not timed).
    pipelined(js, &subjects, &mut versions, &payload, SUBJECTS).await?;

    let started = Instant::now();
    pipelined(js, &subjects, &mut versions, &payload, pipelined_writes).await?;
    let pipelined_elapsed = started.elapsed();

    let mut serial = Samples::with_capacity(serial_writes);
    let serial_started = Instant::now();
    for n in 0..serial_writes {
        let s = n % SUBJECTS;
        let t0 = Instant::now();
        let ack = js
            .send_publish(subjects[s].clone(), publish(&payload, versions[s]))
            .await
            .context("ceiling publish")?
            .await
            .context("ceiling publish acknowledgement")?;
        serial.push(t0.elapsed());
        versions[s] = ack.sequence;
    }
    let serial_elapsed = serial_started.elapsed();
    Ok(Ceiling {
        pipelined_rate: crate::stats::per_second(pipelined_writes as u64, pipelined_elapsed),
        pipelined_writes,
        pipelined_elapsed,
        serial: serial.summary(),
        serial_rate: crate::stats::per_second(serial_writes as u64, serial_elapsed),
    })
}

fn publish(payload: &Bytes, expected: u64) -> PublishMessage {
    PublishMessage::build()
        .payload(payload.clone())
        .expected_last_subject_sequence(expected)
}

/// `writes` conditional publishes with up to [`WINDOW`] awaiting acknowledgement; a
/// subject is written again only once its previous write is acknowledged (its expected
/// sequence is known).
async fn pipelined(
    js: &jetstream::Context,
    subjects: &[String],
    versions: &mut [u64],
    payload: &Bytes,
    writes: usize,
) -> anyhow::Result<()> {
    let mut ready: VecDeque<usize> = (0..subjects.len()).collect();
    let mut inflight = FuturesUnordered::new();
    let mut sent = 0;
    let mut done = 0;
    while done < writes {
        while inflight.len() < WINDOW && sent < writes {
            let Some(s) = ready.pop_front() else { break };
            let ack = js
                .send_publish(subjects[s].clone(), publish(payload, versions[s]))
                .await
                .context("ceiling publish")?;
            inflight.push(async move { (s, ack.await) });
            sent += 1;
        }
        match inflight.next().await {
            Some((s, Ok(ack))) => {
                versions[s] = ack.sequence;
                ready.push_back(s);
                done += 1;
            }
            Some((s, Err(e))) => bail!("ceiling write to {} failed: {e}", subjects[s]),
            None => bail!("ceiling writes stalled after {done} of {writes}"),
        }
    }
    Ok(())
}
