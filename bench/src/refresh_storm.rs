//! Refresh storm: N credentials expiring together across R replicas (R
//! `Refresher`s on one store, each with its own pool), against the strict
//! fake token endpoint — served over HTTP on 127.0.0.2 and called with the
//! worker's own `HttpProvider` (pinned client, address policy, form body,
//! `client_secret_basic`), or in-process with `--provider inproc`. Prints the time to refresh all, the provider calls
//! (must equal N: each credential refreshed exactly once), the families
//! revoked (must be 0) and the store's SQL statements per refresh, counted
//! for real: a `tracing` layer counts sqlx's statement events (target
//! `sqlx::query`, logged at DEBUG, or WARN when slow) during the storm,
//! by kind (the statement's first word).
//!
//! `refresh-storm --store sqlite:/tmp/storm.db` or
//! `refresh-storm --store 'postgres://…&options[search_path]=storm'` (an
//! empty schema).
#![allow(clippy::print_stdout)] // a bench prints its figures

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clap::Parser;
use e2e::token_endpoint::{CallResult, StrictEndpoint};
use secrecy::SecretString;
use worker::refresh::{
    Outcome, Provider, ProviderError, RefreshConfig, RefreshMaterial, Refresher, TokenAnswer,
};

#[derive(Parser)]
struct Args {
    /// The store (`sqlite:PATH` or `postgres://…`), empty.
    #[arg(long)]
    store: String,
    /// Credentials.
    #[arg(long, default_value_t = 1000)]
    credentials: usize,
    /// Replicas.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// `http` (the worker's HttpProvider against the endpoint served on
    /// 127.0.0.2) or `inproc` (the endpoint called in-process).
    #[arg(long, default_value = "http")]
    provider: String,
}

struct Fake(Arc<StrictEndpoint>);

#[async_trait]
impl Provider for Fake {
    async fn refresh(&self, _u: &str, m: &RefreshMaterial) -> Result<TokenAnswer, ProviderError> {
        match self.0.refresh(&m.refresh_token) {
            CallResult::Rotated(a, r) | CallResult::Replayed(a, r) => Ok(TokenAnswer {
                access_token: SecretString::from(a),
                refresh_token: Some(SecretString::from(r)),
                expires_in: Some(3600),
            }),
            CallResult::InvalidGrant => Err(ProviderError::OAuth("invalid_grant".into())),
        }
    }
}

/// Counts sqlx's statement events (one per statement executed), by the
/// statement's first word, while `on` is set.
#[derive(Clone, Default)]
struct SqlCounter {
    on: Arc<std::sync::atomic::AtomicBool>,
    by_kind: Arc<Mutex<BTreeMap<String, u64>>>,
}

struct Summary(Option<String>);

impl tracing::field::Visit for Summary {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "summary" {
            self.0 = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "summary" && self.0.is_none() {
            self.0 = Some(format!("{value:?}").trim_matches('"').to_owned());
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SqlCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "sqlx::query"
            || !self.on.load(std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let mut v = Summary(None);
        event.record(&mut v);
        let kind =
            v.0.as_deref()
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or("?")
                .to_ascii_uppercase();
        if let Ok(mut m) = self.by_kind.lock() {
            *m.entry(kind).or_default() += 1;
        }
    }
}

impl SqlCounter {
    fn total(&self) -> u64 {
        self.by_kind.lock().map_or(0, |m| m.values().sum())
    }
    fn kinds(&self) -> String {
        self.by_kind.lock().map_or_else(
            |_| String::new(),
            |m| {
                m.iter()
                    .map(|(k, n)| format!("{k}:{n}"))
                    .collect::<Vec<_>>()
                    .join(",")
            },
        )
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let counter = SqlCounter::default();
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        // sqlx logs every statement at DEBUG (WARN when slow) under this
        // target: the filter lets exactly those through to the counter.
        let filter = tracing_subscriber::filter::Targets::new()
            .with_target("sqlx::query", tracing::Level::TRACE);
        tracing_subscriber::registry()
            .with(tracing_subscriber::Layer::with_filter(
                counter.clone(),
                filter,
            ))
            .try_init()?;
    }
    let keys = Arc::new(worker::crypto::Keyring::from_keys(&[[9u8; 32]])?);
    let ep = Arc::new(StrictEndpoint::default().with_client("c", "s"));
    let http = match a.provider.as_str() {
        "http" => true,
        "inproc" => false,
        other => anyhow::bail!("--provider {other}: write `http` or `inproc`"),
    };
    // The endpoint over HTTP on 127.0.0.2 (the policy exempts exactly it;
    // 127.0.0.1 stays refused by the provider's address check).
    let (token_url, _server) = ep.serve(
        std::net::SocketAddr::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)),
            0,
        ),
        None,
    );
    let policy = Arc::new(netpolicy::Policy::from_yaml(
        "storm.yaml",
        "version: v1\nunsafe_allow_ranges: [127.0.0.2/32]\norgs:\n  storm:\n    integrations:\n      i:\n        hosts: [api.storm-bench.com]\n",
    )?);
    let setup = worker::store::open(&a.store).await?;
    let tpl = worker::credential::HeaderTemplate::parse(worker::credential::DEFAULT_HEADER)?;
    let now = worker::unix_now();
    let mut ids = Vec::with_capacity(a.credentials);
    for i in 0..a.credentials {
        let c = worker::credential::seal_new(
            &keys,
            "storm",
            &format!("i{i}"),
            &tpl,
            &SecretString::from("at-0".to_owned()),
            now - 100,
        )?;
        let m = RefreshMaterial {
            refresh_token: ep.grant(),
            client_id: "c".into(),
            client_secret: "s".into(),
            client_auth: worker::refresh::ClientAuth::ClientSecretBasic,
        };
        let c = worker::refresh::with_refresh(&keys, &c, &m, &token_url, Some(now))?;
        setup.insert_credential(&c).await?;
        ids.push((c.id.clone(), c.version));
    }
    let cfg = RefreshConfig {
        lease_secs: 30,
        call_deadline: Duration::from_secs(20),
        ..RefreshConfig::default()
    };
    let mut replicas = Vec::new();
    for _ in 0..a.replicas {
        let s = worker::store::open(&a.store).await?;
        let provider: Arc<dyn Provider> = if http {
            let client = Arc::new(worker::client::PinnedClient::new(&[], &[])?);
            Arc::new(worker::provider::HttpProvider::new(client, policy.clone()))
        } else {
            Arc::new(Fake(ep.clone()))
        };
        replicas.push(Arc::new(Refresher::new(s, keys.clone(), provider, cfg)));
    }
    let ids = Arc::new(ids);
    counter.on.store(true, std::sync::atomic::Ordering::SeqCst);
    let t0 = Instant::now();
    // Every replica sweeps every credential (all due), in its own order.
    let mut tasks = Vec::new();
    for (n, r) in replicas.iter().enumerate() {
        let r = r.clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            let len = ids.len();
            for k in 0..len {
                let Some((id, v)) = ids.get((k + n * len / 3) % len) else {
                    continue;
                };
                if matches!(r.refresh(id, *v).await, Ok(Outcome::Refreshed)) {
                    done += 1;
                }
            }
            done
        }));
    }
    let mut refreshed = 0;
    for t in tasks {
        refreshed += t.await?;
    }
    let elapsed = t0.elapsed();
    counter.on.store(false, std::sync::atomic::Ordering::SeqCst);
    let calls = ep.calls().len();
    let statements = counter.total();
    println!(
        "refresh-storm store={} provider={} credentials={} replicas={} refreshed={} provider_calls={} families_revoked={} time_to_refresh_all={:.3}s per_refresh={:.2}ms statements={} statements_per_refresh={:.2} by_kind={}",
        a.store.split(':').next().unwrap_or(""),
        a.provider,
        a.credentials,
        a.replicas,
        refreshed,
        calls,
        ep.revoked_families(),
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / a.credentials.max(1) as f64,
        statements,
        statements as f64 / refreshed.max(1) as f64,
        counter.kinds()
    );
    if statements == 0 {
        anyhow::bail!("no SQL statement was counted: the counter does not see sqlx's events");
    }
    if calls != a.credentials || ep.revoked_families() != 0 {
        anyhow::bail!("a credential was refreshed other than exactly once");
    }
    Ok(())
}
