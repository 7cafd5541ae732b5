//! The test harness: real Apache Kafka and a real Kubernetes API server for
//! Vigil's tests, started by the scripts beside this crate (`e2e/up`).
//!
//! A test asks for what it needs (`kafka()`, `kube_client()`); the services
//! are started on first use if they are not already running (concurrent test
//! binaries serialise on a lock file), and reused afterwards. Each test works
//! in names of its own (`unique_name`, `TestNamespace`) so tests run in
//! parallel and leave nothing behind that the next run could trip over.
//!
//! Environment:
//! - `VIGIL_KAFKA_BOOTSTRAP`, `VIGIL_KUBECONFIG`: use these services instead
//!   of starting the harness's own.
//! - `VIGIL_CACHE`, `VIGIL_STATE`: as for the scripts (see `e2e/README.md`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub mod kafka;
pub mod node;

/// The repository root.
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

pub(crate) fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIGIL_STATE") {
        return dir.into();
    }
    let cache = std::env::var_os("VIGIL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/vigil"));
    cache.join("run")
}

/// Read `KEY` from the environment, else from the harness's env file.
pub(crate) fn setting(key: &str) -> Option<String> {
    if let Ok(v) = std::env::var(key) {
        if !v.is_empty() {
            return Some(v);
        }
    }
    let text = std::fs::read_to_string(state_dir().join("env")).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("export ")?.strip_prefix(key)?.strip_prefix('=')?;
        Some(rest.trim_matches('\'').to_string())
    })
}

/// Run `e2e/up <what>` under a lock so concurrent test binaries start the
/// services once.
pub(crate) fn bring_up(what: &str) -> Result<()> {
    let state = state_dir();
    std::fs::create_dir_all(&state)?;
    let lock = state.join("up.lock");
    let up = repo_dir().join("e2e/up");
    // --close: the services `up` starts must not inherit the lock, or it is
    // held for as long as they run and the next `up` waits forever.
    let out = Command::new("flock")
        .arg("--close")
        .arg(&lock)
        .arg(&up)
        .arg(what)
        .output()
        .with_context(|| format!("failed to run {}", up.display()))?;
    if !out.status.success() {
        bail!(
            "e2e/up {what} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn tcp_reachable(addr: &str) -> bool {
    addr.split(',')
        .next()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

/// The bootstrap address of the real Kafka broker, started if needed.
pub fn kafka() -> &'static str {
    static BOOTSTRAP: OnceLock<String> = OnceLock::new();
    BOOTSTRAP.get_or_init(|| {
        if let Some(addr) = setting("VIGIL_KAFKA_BOOTSTRAP").filter(|a| tcp_reachable(a)) {
            return addr;
        }
        if let Err(e) = bring_up("kafka") {
            panic!("the Kafka test broker could not be started: {e:#}");
        }
        setting("VIGIL_KAFKA_BOOTSTRAP")
            .unwrap_or_else(|| panic!("e2e/up kafka ran but wrote no VIGIL_KAFKA_BOOTSTRAP"))
    })
}

fn kafka_script(arg: &str) -> Result<()> {
    let script = repo_dir().join("e2e/lib/kafka.sh");
    let out = Command::new(&script).arg(arg).output()?;
    if !out.status.success() {
        bail!("kafka.sh {arg} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Stop the harness broker (for outage tests; run them in a test binary of
/// their own, as every other Kafka test of that binary sees the outage).
pub fn stop_kafka() -> Result<()> {
    kafka();
    kafka_script("stop")
}

/// Start the harness broker again on the same port with the same data.
pub fn start_kafka() -> Result<()> {
    kafka_script("start")
}

/// Stop the broker, wait `down`, start it again.
pub fn restart_kafka(down: Duration) -> Result<()> {
    stop_kafka()?;
    std::thread::sleep(down);
    start_kafka()
}

fn k8s_script(arg: &str) -> Result<()> {
    let script = repo_dir().join("e2e/lib/k8s.sh");
    let out = Command::new(&script).arg(arg).output()?;
    if !out.status.success() {
        bail!("k8s.sh {arg} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Stop the API server for `down`, then start it again on the same port
/// with the same data (control-plane chaos tests; run them in a test
/// binary of their own, as every test of that binary sees the outage).
pub fn restart_apiserver(down: Duration) -> Result<()> {
    kubeconfig();
    k8s_script("stop-apiserver")?;
    std::thread::sleep(down);
    k8s_script("start")
}

/// Stop etcd for `down` (the API server stays up and fails its requests),
/// then start it again with the same data.
pub fn restart_etcd(down: Duration) -> Result<()> {
    kubeconfig();
    k8s_script("stop-etcd")?;
    std::thread::sleep(down);
    k8s_script("start")
}

/// The kubeconfig of the real API server, started if needed.
pub fn kubeconfig() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let ready = |p: &str| {
            Command::new("kubectl")
                .args(["--kubeconfig", p, "get", "--raw", "/readyz"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if let Some(path) = setting("VIGIL_KUBECONFIG").filter(|p| ready(p)) {
            return path.into();
        }
        if let Err(e) = bring_up("k8s") {
            panic!("the Kubernetes test API server could not be started: {e:#}");
        }
        setting("VIGIL_KUBECONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("e2e/up k8s ran but wrote no VIGIL_KUBECONFIG"))
    })
}

/// A client for the real API server, with admin rights.
pub async fn kube_client() -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig())?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Run kubectl against the real API server.
pub fn kubectl(args: &[&str]) -> Output {
    Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("kubectl could not be run: {e}"))
}

/// A free TCP port on 127.0.0.1, never the same twice in one process (the
/// OS may hand out a just-released port again).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A benchmark's command-line option `--name N`, or `default`.
pub fn bench_arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A name no other test (or earlier run) uses: `<prefix>-<time><pid><n>`,
/// valid as a namespace, a resource name and a Kafka topic.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    format!("{prefix}-{:x}{:x}{n}", t % 0xff_ffff, std::process::id() % 0xfff)
}

/// Install (or update) Vigil's CRDs with server-side apply and wait until the
/// API server serves them.
pub async fn install_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in vigil_crds::crds() {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        api.patch(&name, &PatchParams::apply("vigil-e2e").force(), &Patch::Apply(&crd)).await?;
        wait_until(Duration::from_secs(30), || async {
            let crd = api.get(&name).await.ok()?;
            let conditions = crd.status?.conditions?;
            conditions.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
        })
        .await
        .with_context(|| format!("CRD {name} was not established"))?;
    }
    Ok(())
}

/// Poll `check` every 100 ms until it returns `Some`, or fail after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A namespace of a test's own, deleted by `cleanup`.
pub struct TestNamespace {
    /// The namespace's name.
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Create a fresh namespace named after `prefix`.
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        let name = unique_name(prefix);
        let api: Api<Namespace> = Api::all(client.clone());
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        ns.metadata.labels = Some([("vigil.dev/e2e".to_string(), "true".to_string())].into());
        api.create(&PostParams::default(), &ns).await?;
        Ok(TestNamespace { name, client: client.clone() })
    }

    /// Delete the namespace (its contents go with it).
    pub async fn cleanup(self) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client);
        api.delete(&self.name, &DeleteParams::background()).await?;
        Ok(())
    }
}
