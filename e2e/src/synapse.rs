//! A real Synapse — `matrix-synapse` from PyPI, installed on first use into a venv beside the
//! test binaries — as an independent federation peer on loopback TLS (`federation::Net`).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{federation::Net, free_port};

/// The Synapse release the interop tests run against.
pub const VERSION: &str = "1.163.2";

/// The venv's Python with Synapse installed: `TIM_E2E_SYNAPSE_VENV`, else `synapse-venv`
/// beside the test binaries (`target/<profile>/`), made and filled on first use (one process
/// at a time, under a file lock).
pub fn python() -> PathBuf {
    let venv = std::env::var_os("TIM_E2E_SYNAPSE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            // target/<profile>/deps/<test> → target/<profile>/synapse-venv
            exe.parent().unwrap().parent().unwrap().join("synapse-venv")
        });
    let python = venv.join("bin/python");
    let marker = venv.join(format!(".installed-{VERSION}"));
    if marker.exists() {
        return python;
    }
    std::fs::create_dir_all(venv.parent().unwrap()).unwrap();
    let lock = std::fs::File::create(venv.with_extension("lock")).unwrap();
    lock.lock().unwrap();
    if !marker.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("matrix-synapse=={VERSION}"),
        ]));
        std::fs::write(&marker, "").unwrap();
    }
    python
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed (Python 3 and PyPI are needed for the Synapse interop tests):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running Synapse: process `index` of the test's `Net`, with a plain-HTTP client listener
/// and a TLS federation listener, on SQLite, registration open.
pub struct Synapse {
    pub server_name: String,
    pub client_port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    fed_port: u16,
    /// `TIM_E2E_RESOLVE` for the launcher: the test network's names and addresses.
    resolve: String,
}

impl Synapse {
    pub fn start(net: &Net, index: usize) -> Self {
        let python = python();
        let (names, fed_port) = &net.processes[index];
        assert_eq!(names.len(), 1, "a Synapse serves one server name");
        let server_name = names[0].clone();
        let dir = tempfile::tempdir().unwrap();
        let client_port = free_port();
        let d = dir.path();
        std::fs::write(d.join("log.yaml"), log_config(&d.join("synapse.log"))).unwrap();
        let config = d.join("homeserver.yaml");
        std::fs::write(
            &config,
            homeserver_yaml(net, &server_name, d, client_port, *fed_port),
        )
        .unwrap();
        run(Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "--generate-keys", "-c"])
            .arg(&config));
        let resolve = net
            .resolve()
            .into_iter()
            .map(|(name, addr)| format!("{name}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut synapse = Synapse {
            server_name,
            client_port,
            dir,
            child: None,
            fed_port: *fed_port,
            resolve,
        };
        synapse.start_again();
        synapse
    }

    /// Starts the process (again, after `kill9`) on the same data and ports.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "Synapse is running");
        let d = self.dir.path();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("stderr.log"))
            .unwrap();
        let launcher = Path::new(env!("CARGO_MANIFEST_DIR")).join("synapse/run.py");
        let child = Command::new(python())
            .arg(launcher)
            .arg("-c")
            .arg(d.join("homeserver.yaml"))
            .env("TIM_E2E_RESOLVE", &self.resolve)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start Synapse");
        self.child = Some(child);
        self.wait_up(self.fed_port);
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    fn wait_up(&mut self, fed_port: u16) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = [self.client_port, fed_port]
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if up {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("Synapse exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "Synapse did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Synapse's log and stderr (for failure messages).
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        let log = read("synapse.log");
        let tail: String = log
            .lines()
            .rev()
            .take(80)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        format!("{}\n{tail}", read("stderr.log"))
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("Synapse {}'s log:\n{}", self.server_name, self.log());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn homeserver_yaml(
    net: &Net,
    server_name: &str,
    dir: &Path,
    client_port: u16,
    fed_port: u16,
) -> String {
    let d = dir.display();
    // Rate limits raised: the tests send in bursts from few users and one peer server.
    let unlimited = "{per_second: 10000, burst_count: 10000}";
    format!(
        r#"server_name: "{server_name}"
pid_file: "{d}/homeserver.pid"
public_baseurl: "http://127.0.0.1:{client_port}/"
listeners:
  - port: {client_port}
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources: [{{names: [client], compress: false}}]
  - port: {fed_port}
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: true
    resources: [{{names: [federation], compress: false}}]
tls_certificate_path: "{cert}"
tls_private_key_path: "{key}"
federation_verify_certificates: true
federation_custom_ca_list: ["{ca}"]
ip_range_blacklist: []
ip_range_whitelist: ["127.0.0.0/8"]
trusted_key_servers: []
suppress_key_server_warning: true
database:
  name: sqlite3
  args: {{database: "{d}/homeserver.db"}}
log_config: "{d}/log.yaml"
media_store_path: "{d}/media"
signing_key_path: "{d}/signing.key"
report_stats: false
# As TI-M providers run it: room versions 9 and 10 only (A-ROOM-01).
default_room_version: "10"
enable_registration: true
enable_registration_without_verification: true
macaroon_secret_key: "{secret}"
form_secret: "{secret}"
rc_message: {unlimited}
rc_registration: {unlimited}
rc_joins: {{local: {unlimited}, remote: {unlimited}}}
rc_invites: {{per_room: {unlimited}, per_user: {unlimited}, per_issuer: {unlimited}}}
rc_login: {{address: {unlimited}, account: {unlimited}, failed_attempts: {unlimited}}}
rc_federation: {{window_size: 1000, sleep_limit: 1000, sleep_delay: 1, reject_limit: 1000, concurrent: 100}}
rc_key_requests: {unlimited}
# A destination that was down is tried again within seconds, not minutes, so that tests see
# Synapse's catch-up after an outage.
federation:
  destination_min_retry_interval: 1s
  destination_retry_multiplier: 1
  destination_max_retry_interval: 2s
"#,
        cert = net.cert_file.display(),
        key = net.key_file.display(),
        ca = net.ca_file.display(),
        secret = crate::unique("secret"),
    )
}

fn log_config(file: &Path) -> String {
    format!(
        r#"version: 1
formatters:
  precise: {{format: "%(asctime)s %(name)s %(levelname)s %(request)s %(message)s"}}
filters:
  context: {{(): synapse.logging.context.LoggingContextFilter}}
handlers:
  file:
    class: logging.FileHandler
    filename: "{}"
    formatter: precise
    filters: [context]
root: {{level: INFO, handlers: [file]}}
disable_existing_loggers: false
"#,
        file.display()
    )
}
