//! The exchange as processes on loopback, each on a port fixed for the run (so
//! that a restarted service is found where it was), with a Postgres and a Redis
//! of the run's own that may be restarted, flushed or killed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// A port free now, below the kernel's ephemeral range (32768 and up), so that
/// no outgoing connection takes it while its service is down for a restart.
pub fn free_port() -> anyhow::Result<u16> {
    use rand::Rng;
    for _ in 0..1000 {
        let port = rand::rng().random_range(15_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port between 15000 and 32000")
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// A directory that holds Debian's Postgres server programs.
fn postgres_bin() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql (set PG_BIN to the directory of initdb)")?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|d| d.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .context("no initdb under /usr/lib/postgresql/*/bin (set PG_BIN)")
}

/// A Postgres server of the run's own, in the run's directory.
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    pub port: u16,
    /// The server refuses to run as root: it runs as this user then.
    run_as: Option<&'static str>,
}

impl Postgres {
    fn command(&self, program: &str) -> std::process::Command {
        let path = self.bin.join(program);
        match self.run_as {
            Some(user) => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => std::process::Command::new(path),
        }
    }

    /// Runs a Postgres program to completion. Its output goes to the server's
    /// log: a server it starts inherits the output, and a pipe would never close.
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let status = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("running {program}"))?;
        if !status.success() {
            bail!("{program} {args:?} failed (see {:?})", self.log);
        }
        Ok(())
    }

    /// Creates a cluster in `dir` and starts it on `port`.
    pub fn start(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let run_as = running_as_root().then_some("postgres");
        let pg = Self {
            bin: postgres_bin()?,
            data: dir.join("pgdata"),
            log: dir.join("logs/postgres.log"),
            port,
            run_as,
        };
        // The server writes this log itself: it must own it.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&pg.log)?;
        if let Some(user) = run_as {
            let status = std::process::Command::new("chown")
                .args(["-R", &format!("{user}:{user}")])
                .arg(dir)
                .status()?;
            anyhow::ensure!(status.success(), "cannot give {dir:?} to {user}");
        }
        let data = pg.data.to_string_lossy().into_owned();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        let options = format!(
            "-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c full_page_writes=off -c max_connections=300"
        );
        pg.run(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-l",
                &pg.log.to_string_lossy(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        )?;
        Ok(pg)
    }

    pub fn admin_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Restarts the server: `immediate` as a crash would (no shutdown
    /// checkpoint, clients cut), else a fast, clean restart.
    pub fn restart(&self, immediate: bool) -> anyhow::Result<()> {
        let mode = if immediate { "immediate" } else { "fast" };
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-l",
                &self.log.to_string_lossy(),
                "-m",
                mode,
                "-w",
                "restart",
            ],
        )
    }

    /// Stops the server at once.
    pub fn stop(&self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-m",
                "immediate",
                "stop",
            ],
        );
    }
}

/// A Redis of the run's own (nothing on disk).
pub struct Redis {
    pub port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Redis {
    pub fn start(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let mut redis = Self {
            port,
            log: dir.join("logs/redis.log"),
            child: None,
        };
        redis.spawn()?;
        Ok(redis)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile"])
            .arg(&self.log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Waits until Redis answers PING.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.command("PING").await.is_err() {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "redis did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Sends one inline command and reads its one-line answer.
    pub async fn command(&self, command: &str) -> anyhow::Result<String> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        anyhow::ensure!(line.starts_with('+'), "redis answered {line:?}");
        Ok(line.trim().to_owned())
    }

    /// Kills Redis (all its keys gone) and starts it again.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        self.spawn()?;
        self.wait_ready(Duration::from_secs(10)).await
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// One service process, restartable on the same ports.
pub struct Service {
    pub name: &'static str,
    bin: PathBuf,
    env: BTreeMap<String, String>,
    /// The admin port (`/readyz`, `/metrics`).
    pub admin: u16,
    /// The path answering 200 when the service is ready.
    ready_path: &'static str,
    log: PathBuf,
    child: Option<Child>,
}

impl Service {
    pub fn new(
        name: &'static str,
        bin_dir: &Path,
        dir: &Path,
        admin: u16,
        env: &[(&str, String)],
    ) -> Self {
        Self {
            name,
            bin: bin_dir.join(name),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            admin,
            ready_path: if name == "upbit-sim" {
                "/healthz"
            } else {
                "/readyz"
            },
            log: dir.join(format!("logs/{name}.log")),
            child: None,
        }
    }

    /// Sets (or with `None`, removes) an environment variable for later starts.
    pub fn set_env(&mut self, key: &str, value: Option<String>) {
        match value {
            Some(v) => self.env.insert(key.to_owned(), v),
            None => self.env.remove(key),
        };
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .envs(&self.env)
            .env("LOG_FORMAT", "json")
            .env("POD_NAME", "chaos")
            .env("DRAIN_DELAY", "0s")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether the process is alive.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` (KILL, TERM) to the process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let Some(pid) = self.child.as_ref().and_then(|c| c.id()) else {
            return Ok(());
        };
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -s {signal} {pid} failed");
        Ok(())
    }

    /// Waits for the process to exit; kills it after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && tokio::time::timeout(timeout, child.wait()).await.is_err()
        {
            child.kill().await?;
            bail!("{} did not stop within {timeout:?}; killed", self.name);
        }
        self.child = None;
        Ok(())
    }

    pub async fn ready(&self, http: &reqwest::Client) -> bool {
        let url = format!("http://127.0.0.1:{}{}", self.admin, self.ready_path);
        matches!(http.get(url).send().await, Ok(r) if r.status() == 200)
    }

    pub async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.ready(http).await {
            anyhow::ensure!(self.running(), "{} exited (see {:?})", self.name, self.log);
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} not ready after {timeout:?} (see {:?})",
                self.name,
                self.log
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}
