//! Real servers of the protocols crmguard's inspection layer identifies, each started inside a
//! lab network namespace on a given address and port: nginx (TLS, HTTP/1.x, h2c), PostgreSQL 15,
//! MariaDB, Redis, OpenSSH's sshd and an SMTP server (aiosmtpd) that offers AUTH before STARTTLS.
//!
//! Every server keeps all of its state (configuration, data, keys, certificates, logs, pid and
//! socket files) in a temporary directory of its own, and nothing in the host's `/etc` or
//! `/var` is used, so the Debian services of the same packages neither matter nor conflict.
//! A server runs in a process group of its own, entered into the namespace by `nsenter --net`
//! (as an unprivileged user where the server refuses root). Starting waits, with a deadline,
//! until the server accepts TCP connections on its address (and, where the lab must create a
//! user first, until that is done); a server that exits before then fails the start with the
//! tail of its log. Dropping a server, also when its start failed half-way, stops it (SIGTERM,
//! then SIGKILL for the whole group) and removes its directory.
//!
//! The TLS servers use a self-signed certificate for [`SERVER_NAME`], made with `openssl` at
//! start; clients get its path to trust it or are told to skip verification.

use std::fs;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::User;
use tempfile::TempDir;

use crate::cmd;
use crate::netns::NetNs;
use crate::process::Process;
use crate::wait::wait_for;

/// The name in every server certificate (CN and subjectAltName).
pub const SERVER_NAME: &str = "crm.example.com";

/// How long a server may take to accept connections (and its lab user to be created).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stopped server gets to exit after SIGTERM before its group is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// PostgreSQL 15's programs (Debian package `postgresql-15`).
pub const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The login role and the database the PostgreSQL and MariaDB servers create.
pub const DB_USER: &str = "crm";
pub const DB_NAME: &str = "crm";

/// A self-signed certificate and its private key (PEM).
#[derive(Debug, Clone)]
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a self-signed RSA certificate for [`SERVER_NAME`] in `dir` (`NAME.crt`, `NAME.key`).
pub fn self_signed(dir: &Path, name: &str) -> Result<Cert> {
    let cert = Cert {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    cmd::stdout_of(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
            ])
            .arg("-subj")
            .arg(format!("/CN={SERVER_NAME}"))
            .arg("-addext")
            .arg(format!("subjectAltName=DNS:{SERVER_NAME}"))
            .arg("-keyout")
            .arg(&cert.key)
            .arg("-out")
            .arg(&cert.cert),
    )
    .context("making a self-signed certificate (apt-get install openssl)")?;
    Ok(cert)
}

/// A running server: its process group, stopped on drop, and its state directory, removed
/// after the process is gone.
#[derive(Debug)]
pub struct Server {
    label: String,
    /// Declared before `dir`: the server writes into the directory until it is stopped.
    process: Option<Process>,
    dir: TempDir,
}

impl Server {
    /// A state directory for `label`, traversable by the unprivileged users some servers run as.
    fn prepare(label: &str) -> Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("crmguard-{label}-"))
            .tempdir()
            .with_context(|| format!("creating the directory of {label}"))?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .with_context(|| format!("opening up {}", dir.path().display()))?;
        Ok(Server {
            label: label.to_owned(),
            process: None,
            dir,
        })
    }

    /// The server's state directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log (stdout and stderr).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.label))
    }

    /// Starts `program args...` in `ns` (as `user` when given), in its own process group.
    fn spawn(
        &mut self,
        ns: &NetNs,
        program: &str,
        args: &[String],
        user: Option<&User>,
    ) -> Result<()> {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net={}", ns.path().display()));
        if let Some(user) = user {
            command
                .arg(format!("--setgid={}", user.gid))
                .arg(format!("--setuid={}", user.uid));
        }
        command.arg(program).args(args).current_dir(self.dir.path());
        let log = self.log();
        self.process = Some(Process::spawn_logged(
            command,
            &self.label,
            &log,
            STOP_GRACE,
        )?);
        Ok(())
    }

    /// Fails with the tail of the log when the server has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.process.as_mut() {
            Some(process) => process.check_alive(),
            None => bail!("{} was never started", self.label),
        }
    }

    /// Waits until the server accepts TCP connections on `addr` inside `ns`.
    fn wait_listening(&mut self, ns: &NetNs, addr: SocketAddr) -> Result<()> {
        let what = format!("{} to accept connections on {addr}", self.label);
        wait_for(READY_TIMEOUT, &what, || {
            if let Err(e) = self.check_alive() {
                return Ok(Some(Err(e)));
            }
            let connected =
                ns.run_in(|| TcpStream::connect_timeout(&addr, Duration::from_secs(1)))?;
            Ok(connected.ok().map(|_| Ok(())))
        })?
    }

    /// Polls `probe` (a setup command that fails until the server is ready) with a deadline,
    /// failing at once when the server exits.
    fn wait_ready(&mut self, what: &str, mut probe: impl FnMut() -> Result<()>) -> Result<()> {
        wait_for(READY_TIMEOUT, what, || {
            if let Err(e) = self.check_alive() {
                return Ok(Some(Err(e)));
            }
            probe().map(|()| Some(Ok(())))
        })?
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        let pgid = process.pid();
        if let Err(e) = process.terminate(STOP_GRACE) {
            eprintln!("stopping {}: {e:#}", self.label);
        }
        drop(process);
        // Workers and per-connection children (nginx, postgres, sshd) outlive a killed leader;
        // they are still in its group, whose id stays reserved while any member lives.
        match killpg(pgid, Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => eprintln!("killing the process group of {}: {e}", self.label),
        }
    }
}

/// The ports of an [`Nginx`] server.
#[derive(Debug, Clone, Copy)]
pub struct NginxPorts {
    /// HTTPS (TLSv1.2 and TLSv1.3, HTTP/2 by ALPN).
    pub tls: u16,
    /// Plain HTTP/1.0 and HTTP/1.1.
    pub http: u16,
    /// Plain HTTP/2 with prior knowledge (h2c): this port speaks nothing else.
    pub h2c: u16,
}

/// nginx with a static site, a `/private/` area behind HTTP basic authentication and a
/// `/login` endpoint that answers POST requests.
#[derive(Debug)]
pub struct Nginx {
    server: Server,
    addr: IpAddr,
    ports: NginxPorts,
    cert: Cert,
}

impl Nginx {
    /// Starts `/usr/sbin/nginx` on `addr` with `ports`; `user`/`password` is the one account
    /// `/private/` accepts (any other answers 401).
    pub fn start(
        ns: &NetNs,
        addr: IpAddr,
        ports: NginxPorts,
        user: &str,
        password: &str,
    ) -> Result<Nginx> {
        let mut server = Server::prepare("nginx")?;
        let dir = server.dir().to_path_buf();
        let cert = self_signed(&dir, "nginx")?;
        let www = dir.join("www");
        fs::create_dir_all(www.join("private"))?;
        fs::write(
            www.join("index.html"),
            "<!doctype html><html><head><title>CRM</title></head>\
             <body><h1>CRM</h1><form action=\"/login\" method=\"post\">\
             <input name=\"user\"><input name=\"password\" type=\"password\">\
             <button>Sign in</button></form></body></html>\n",
        )?;
        fs::write(
            www.join("private").join("index.html"),
            "<!doctype html><html><body><p>customer records</p></body></html>\n",
        )?;
        let hash = cmd::stdout_of(Command::new("openssl").args(["passwd", "-apr1", password]))
            .context("hashing the basic authentication password")?;
        fs::write(dir.join("htpasswd"), format!("{user}:{}\n", hash.trim()))?;
        for temp in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            fs::create_dir_all(dir.join("temp").join(temp))?;
        }
        let conf = dir.join("nginx.conf");
        fs::write(&conf, nginx_conf(&dir, addr, ports, &cert))?;
        let d = dir.display();
        let args = vec![
            "-p".to_owned(),
            format!("{d}/"),
            "-c".to_owned(),
            conf.display().to_string(),
            "-g".to_owned(),
            "daemon off;".to_owned(),
        ];
        server.spawn(ns, "/usr/sbin/nginx", &args, None)?;
        for port in [ports.tls, ports.http, ports.h2c] {
            server.wait_listening(ns, SocketAddr::new(addr, port))?;
        }
        Ok(Nginx {
            server,
            addr,
            ports,
            cert,
        })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn ports(&self) -> NginxPorts {
        self.ports
    }

    /// The certificate the TLS port presents (self-signed: it is its own CA).
    pub fn cert(&self) -> &Path {
        &self.cert.cert
    }

    pub fn server(&mut self) -> &mut Server {
        &mut self.server
    }
}

fn nginx_conf(dir: &Path, addr: IpAddr, ports: NginxPorts, cert: &Cert) -> String {
    let d = dir.display();
    let host = match addr {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let locations = format!(
        "        root {d}/www;\n\
         \x20       location / {{ index index.html; }}\n\
         \x20       location /private/ {{\n\
         \x20           auth_basic \"CRM records\";\n\
         \x20           auth_basic_user_file {d}/htpasswd;\n\
         \x20           index index.html;\n\
         \x20       }}\n\
         \x20       location = /login {{\n\
         \x20           if ($request_method != POST) {{ return 405; }}\n\
         \x20           return 200 \"login form\\n\";\n\
         \x20       }}\n"
    );
    format!(
        "worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         \x20   access_log {d}/access.log;\n\
         \x20   default_type text/html;\n\
         \x20   client_body_temp_path {d}/temp/body;\n\
         \x20   proxy_temp_path {d}/temp/proxy;\n\
         \x20   fastcgi_temp_path {d}/temp/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/temp/uwsgi;\n\
         \x20   scgi_temp_path {d}/temp/scgi;\n\
         \x20   server {{\n\
         \x20       listen {host}:{tls} ssl http2;\n\
         \x20       server_name {SERVER_NAME};\n\
         \x20       ssl_certificate {cert};\n\
         \x20       ssl_certificate_key {key};\n\
         \x20       ssl_protocols TLSv1.2 TLSv1.3;\n\
         {locations}\
         \x20   }}\n\
         \x20   server {{\n\
         \x20       listen {host}:{http};\n\
         \x20       server_name {SERVER_NAME};\n\
         {locations}\
         \x20   }}\n\
         \x20   server {{\n\
         \x20       listen {host}:{h2c} http2;\n\
         \x20       server_name {SERVER_NAME};\n\
         {locations}\
         \x20   }}\n\
         }}\n",
        tls = ports.tls,
        http = ports.http,
        h2c = ports.h2c,
        cert = cert.cert.display(),
        key = cert.key.display(),
    )
}

/// The system user an unprivileged server runs as (created by its Debian package).
fn system_user(name: &str) -> Result<User> {
    User::from_name(name)
        .with_context(|| format!("looking up the user {name}"))?
        .with_context(|| format!("there is no user {name} (its server's package creates it)"))
}

/// Creates `path` (mode 0700) owned by `user`.
fn owned_dir(path: &Path, user: &User) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    give(path, user)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", path.display()))
}

fn give(path: &Path, user: &User) -> Result<()> {
    chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .with_context(|| format!("giving {} to {}", path.display(), user.name))
}

/// A SQL string literal (single quotes doubled).
fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// PostgreSQL 15 with the role [`DB_USER`] (cleartext `password` authentication over TCP, with
/// and without TLS) and the database [`DB_NAME`].
#[derive(Debug)]
pub struct Postgres {
    server: Server,
    port: u16,
    cert: Cert,
}

impl Postgres {
    /// Runs `initdb` and `postgres` as the `postgres` system user, listening on `addr:port`
    /// with `ssl = on`, and creates the role [`DB_USER`] with `password`.
    pub fn start(ns: &NetNs, addr: IpAddr, port: u16, password: &str) -> Result<Postgres> {
        let user = system_user("postgres")?;
        let mut server = Server::prepare("postgres")?;
        let dir = server.dir().to_path_buf();
        let data = dir.join("data");
        let socket_dir = dir.join("socket");
        let tls = dir.join("tls");
        for path in [&data, &socket_dir, &tls] {
            owned_dir(path, &user)?;
        }
        let cert = self_signed(&tls, "postgres")?;
        give(&cert.cert, &user)?;
        give(&cert.key, &user)?;
        let bin = Path::new(POSTGRES_BIN);
        cmd::stdout_of(
            Command::new(bin.join("initdb"))
                .uid(user.uid.as_raw())
                .gid(user.gid.as_raw())
                .current_dir(&dir)
                .args(["--username=postgres", "--auth-local=trust"])
                .args(["--auth-host=reject", "--encoding=UTF8", "--no-locale", "-D"])
                .arg(&data),
        )
        .context("initdb (apt-get install postgresql-15)")?;
        let conf = format!(
            "listen_addresses = '{addr}'\n\
             port = {port}\n\
             unix_socket_directories = '{socket}'\n\
             ssl = on\n\
             ssl_cert_file = '{cert}'\n\
             ssl_key_file = '{key}'\n\
             password_encryption = 'scram-sha-256'\n\
             fsync = off\n\
             shared_buffers = 16MB\n\
             logging_collector = off\n\
             log_connections = on\n",
            socket = socket_dir.display(),
            cert = cert.cert.display(),
            key = cert.key.display(),
        );
        append(&data.join("postgresql.conf"), &conf)?;
        fs::write(
            data.join("pg_hba.conf"),
            "local all postgres trust\n\
             hostssl all all 0.0.0.0/0 password\n\
             hostnossl all all 0.0.0.0/0 password\n\
             hostssl all all ::/0 password\n\
             hostnossl all all ::/0 password\n",
        )?;
        let program = bin.join("postgres");
        let args = vec!["-D".to_owned(), data.display().to_string()];
        server.spawn(ns, &program.display().to_string(), &args, Some(&user))?;
        server.wait_listening(ns, SocketAddr::new(addr, port))?;
        let psql = |sql: &str| -> Result<String> {
            cmd::stdout_of(
                Command::new(bin.join("psql"))
                    .arg("-h")
                    .arg(&socket_dir)
                    .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
                    .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-c", sql]),
            )
        };
        server.wait_ready("postgres to answer on its socket", || {
            psql("SELECT 1").map(drop)
        })?;
        psql(&format!(
            "CREATE ROLE {DB_USER} LOGIN PASSWORD {}",
            sql_string(password)
        ))?;
        psql(&format!("CREATE DATABASE {DB_NAME} OWNER {DB_USER}"))?;
        Ok(Postgres { server, port, cert })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's certificate (self-signed: it is its own CA).
    pub fn cert(&self) -> &Path {
        &self.cert.cert
    }

    pub fn server(&mut self) -> &mut Server {
        &mut self.server
    }
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// MariaDB with the user `crm@'%'` ([`DB_USER`]) and the database [`DB_NAME`], TLS available.
#[derive(Debug)]
pub struct MariaDb {
    server: Server,
    port: u16,
    cert: Cert,
}

impl MariaDb {
    /// Runs `mariadb-install-db` and `mariadbd` (as root, `--user=root`) on `addr:port` and
    /// creates the user [`DB_USER`]`@'%'` with `password`.
    pub fn start(ns: &NetNs, addr: IpAddr, port: u16, password: &str) -> Result<MariaDb> {
        let mut server = Server::prepare("mariadb")?;
        let dir = server.dir().to_path_buf();
        let data = dir.join("data");
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp)?;
        let cert = self_signed(&dir, "mariadb")?;
        let socket = dir.join("mysqld.sock");
        cmd::stdout_of(
            Command::new("mariadb-install-db")
                .current_dir(&dir)
                .args(["--no-defaults", "--user=root", "--skip-test-db"])
                .args(["--auth-root-authentication-method=socket"])
                .arg(format!("--datadir={}", data.display())),
        )
        .context("mariadb-install-db (apt-get install mariadb-server)")?;
        let args = vec![
            "--no-defaults".to_owned(),
            "--user=root".to_owned(),
            format!("--datadir={}", data.display()),
            format!("--tmpdir={}", tmp.display()),
            format!("--socket={}", socket.display()),
            format!("--pid-file={}", dir.join("mariadbd.pid").display()),
            format!("--bind-address={addr}"),
            format!("--port={port}"),
            "--skip-name-resolve".to_owned(),
            "--skip-log-bin".to_owned(),
            "--innodb-buffer-pool-size=16M".to_owned(),
            format!("--ssl-cert={}", cert.cert.display()),
            format!("--ssl-key={}", cert.key.display()),
        ];
        server.spawn(ns, "/usr/sbin/mariadbd", &args, None)?;
        server.wait_listening(ns, SocketAddr::new(addr, port))?;
        let sql = |statement: &str| -> Result<String> {
            cmd::stdout_of(
                Command::new("mariadb")
                    .arg("--no-defaults")
                    .arg(format!("--socket={}", socket.display()))
                    .args(["-u", "root", "-e", statement]),
            )
        };
        server.wait_ready("mariadb to answer on its socket", || {
            sql("SELECT 1").map(drop)
        })?;
        sql(&format!(
            "CREATE USER '{DB_USER}'@'%' IDENTIFIED BY {}; \
             CREATE DATABASE {DB_NAME}; \
             GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'%';",
            sql_string(password)
        ))?;
        Ok(MariaDb { server, port, cert })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's certificate (self-signed: it is its own CA).
    pub fn cert(&self) -> &Path {
        &self.cert.cert
    }

    pub fn server(&mut self) -> &mut Server {
        &mut self.server
    }
}

/// redis-server with a password (`requirepass`) and no persistence.
#[derive(Debug)]
pub struct Redis {
    server: Server,
    port: u16,
}

impl Redis {
    pub fn start(ns: &NetNs, addr: IpAddr, port: u16, password: &str) -> Result<Redis> {
        let mut server = Server::prepare("redis")?;
        let dir = server.dir().to_path_buf();
        let args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            &addr.to_string(),
            "--requirepass",
            password,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            &dir.display().to_string(),
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
        server.spawn(ns, "/usr/bin/redis-server", &args, None)?;
        server.wait_listening(ns, SocketAddr::new(addr, port))?;
        Ok(Redis { server, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn server(&mut self) -> &mut Server {
        &mut self.server
    }
}

/// The privilege separation directory sshd insists on.
const SSHD_EMPTY_DIR: &str = "/run/sshd";

/// OpenSSH's sshd with Ed25519, ECDSA and RSA host keys of its own and password
/// authentication; no account is set up, so logins fail after the key exchange.
#[derive(Debug)]
pub struct Sshd {
    server: Server,
    port: u16,
    host_keys: Vec<PathBuf>,
}

impl Sshd {
    pub fn start(ns: &NetNs, addr: IpAddr, port: u16) -> Result<Sshd> {
        Sshd::start_with(ns, addr, port, "")
    }

    /// An sshd that lets root in with the keys of `authorized_keys` (and nothing else): an
    /// administrator's session, in which commands run with `SSH_CONNECTION` set by sshd.
    pub fn start_for_admin(
        ns: &NetNs,
        addr: IpAddr,
        port: u16,
        authorized_keys: &Path,
    ) -> Result<Sshd> {
        // sshd keeps the first value it reads of a keyword: these come before the defaults.
        let login = format!(
            "PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             AuthorizedKeysFile {}\n",
            authorized_keys.display()
        );
        Sshd::start_with(ns, addr, port, &login)
    }

    fn start_with(ns: &NetNs, addr: IpAddr, port: u16, first: &str) -> Result<Sshd> {
        let mut server = Server::prepare("sshd")?;
        let dir = server.dir().to_path_buf();
        fs::create_dir_all(SSHD_EMPTY_DIR).with_context(|| format!("creating {SSHD_EMPTY_DIR}"))?;
        fs::set_permissions(SSHD_EMPTY_DIR, fs::Permissions::from_mode(0o755))?;
        let mut host_keys = Vec::new();
        for (kind, bits) in [
            ("ed25519", None),
            ("ecdsa", Some("256")),
            ("rsa", Some("3072")),
        ] {
            let key = dir.join(format!("ssh_host_{kind}_key"));
            let mut keygen = Command::new("ssh-keygen");
            keygen.args(["-q", "-N", "", "-t", kind]);
            if let Some(bits) = bits {
                keygen.args(["-b", bits]);
            }
            cmd::stdout_of(keygen.arg("-f").arg(&key))
                .context("making a host key (apt-get install openssh-client)")?;
            host_keys.push(key);
        }
        let mut conf = format!(
            "{first}\
             Port {port}\n\
             ListenAddress {addr}\n\
             PidFile {pid}\n\
             UsePAM no\n\
             StrictModes no\n\
             PasswordAuthentication yes\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin no\n\
             LogLevel VERBOSE\n",
            pid = dir.join("sshd.pid").display(),
        );
        for key in &host_keys {
            conf.push_str(&format!("HostKey {}\n", key.display()));
        }
        let config = dir.join("sshd_config");
        fs::write(&config, conf)?;
        let check = cmd::stdout_of(
            Command::new("/usr/sbin/sshd")
                .arg("-t")
                .arg("-f")
                .arg(&config),
        );
        check.context("checking sshd's configuration (apt-get install openssh-server)")?;
        let args = vec![
            "-D".to_owned(),
            "-e".to_owned(),
            "-f".to_owned(),
            config.display().to_string(),
        ];
        server.spawn(ns, "/usr/sbin/sshd", &args, None)?;
        server.wait_listening(ns, SocketAddr::new(addr, port))?;
        Ok(Sshd {
            server,
            port,
            host_keys,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host public keys (`.pub`), for a client's known_hosts.
    pub fn host_public_keys(&self) -> Vec<PathBuf> {
        self.host_keys
            .iter()
            .map(|key| key.with_extension("pub"))
            .collect()
    }

    pub fn server(&mut self) -> &mut Server {
        &mut self.server
    }
}

/// The SMTP server: aiosmtpd, which offers AUTH PLAIN and LOGIN before STARTTLS (as some CRM
/// mail relays do) and STARTTLS with a self-signed certificate.
const SMTP_SCRIPT: &str = r#"
import signal
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

addr, port, user, password, cert, key = sys.argv[1:7]


class Accept:
    async def handle_DATA(self, server, session, envelope):
        return "250 Message accepted for delivery"


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == user.encode()
        and auth_data.password == password.encode()
    )
    return AuthResult(success=ok, handled=False)


tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
tls.load_cert_chain(cert, key)
controller = Controller(
    Accept(),
    hostname=addr,
    port=int(port),
    authenticator=authenticate,
    auth_require_tls=False,
    tls_context=tls,
    require_starttls=False,
)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
controller.start()
print("listening", flush=True)
try:
    while True:
        signal.pause()
finally:
    controller.stop()
"#;

/// An SMTP server (Python's aiosmtpd) that accepts one user and password (any other gets 535)
/// with AUTH offered before STARTTLS, and STARTTLS with a self-signed certificate.
#[derive(Debug)]
pub struct Smtp {
    server: Server,
    port: u16,
    cert: Cert,
}

impl Smtp {
    pub fn start(ns: &NetNs, addr: IpAddr, port: u16, user: &str, password: &str) -> Result<Smtp> {
        let mut server = Server::prepare("smtp")?;
        let dir = server.dir().to_path_buf();
        let cert = self_signed(&dir, "smtp")?;
        let script = dir.join("smtpd.py");
        fs::write(&script, SMTP_SCRIPT)?;
        let args = vec![
            "-u".to_owned(),
            script.display().to_string(),
            addr.to_string(),
            port.to_string(),
            user.to_owned(),
            password.to_owned(),
            cert.cert.display().to_string(),
            cert.key.display().to_string(),
        ];
        // Debian's interpreter, which has python3-aiosmtpd, whatever python3 PATH finds first.
        server.spawn(ns, "/usr/bin/python3", &args, None)?;
        server.wait_listening(ns, SocketAddr::new(addr, port))?;
        Ok(Smtp { server, port, cert })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The certificate STARTTLS presents (self-signed: it is its own CA).
    pub fn cert(&self) -> &Path {
        &self.cert.cert
    }

    pub fn server(&mut self) -> &mut Server {
        &mut self.server
    }
}
