//! What the parsers see and what they answer: the protocols told apart, the reassembled bytes
//! of one flow, and the facts a parser reports for the policy to act on.
//!
//! Every parser is a pair of pure functions over [`Streams`], the first bytes of each direction
//! of one TCP connection as far as they are contiguous: `identify` answers whether the bytes are
//! its protocol, and `analyze` (called only on a flow it identified) reports what the policy
//! needs. Both are called again, from the first byte, each time a direction grows, so a parser
//! keeps no state of its own: a message split at any byte is simply incomplete until the rest
//! arrives.

use std::fmt;

/// The protocols inspection identifies, plus the names of flows it could not identify.
/// The names are metric labels and audit details: never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// Neither side's first bytes match a known protocol.
    Unknown,
    /// A TLS handshake from the first byte.
    Tls,
    /// HTTP/1.0 or HTTP/1.1 in the clear.
    Http,
    /// HTTP/2 with prior knowledge: the client connection preface in the clear.
    Http2,
    /// PostgreSQL's frontend/backend protocol: SSLRequest, GSSENCRequest or StartupMessage.
    Postgresql,
    /// MySQL or MariaDB: the server's initial handshake packet.
    Mysql,
    /// Redis: RESP arrays or inline commands.
    Redis,
    /// SSH: the identification banner.
    Ssh,
    /// SMTP: the server's 220 greeting, then the client's EHLO or HELO.
    Smtp,
    /// A connection that began before inspection saw it (its SYN was not seen), whose bytes
    /// could not be identified from where they were picked up.
    Midstream,
}

impl Protocol {
    /// Every protocol, in label order.
    pub const ALL: [Protocol; 10] = [
        Protocol::Unknown,
        Protocol::Tls,
        Protocol::Http,
        Protocol::Http2,
        Protocol::Postgresql,
        Protocol::Mysql,
        Protocol::Redis,
        Protocol::Ssh,
        Protocol::Smtp,
        Protocol::Midstream,
    ];

    /// The name used in metrics, audit records and the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Unknown => "unknown",
            Protocol::Tls => "tls",
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Postgresql => "postgresql",
            Protocol::Mysql => "mysql",
            Protocol::Redis => "redis",
            Protocol::Ssh => "ssh",
            Protocol::Smtp => "smtp",
            Protocol::Midstream => "midstream",
        }
    }

    /// The protocol named `name` (as [`Protocol::as_str`] spells it).
    pub fn from_name(name: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The index of this protocol in [`Protocol::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first bytes of one TCP connection, each direction from its first byte, as far as they
/// are contiguous. The client is the side that sent the SYN (a tunnel peer, for the flows
/// inspection sees).
#[derive(Debug, Clone, Copy, Default)]
pub struct Streams<'a> {
    /// What the client sent.
    pub client: &'a [u8],
    /// What the server sent.
    pub server: &'a [u8],
    /// No more client bytes will be seen: the reassembly window is full or the client closed.
    pub client_done: bool,
    /// No more server bytes will be seen.
    pub server_done: bool,
}

/// A parser's answer to "are these bytes my protocol?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ident {
    /// They are not, whatever follows.
    No,
    /// They could be; more bytes will tell.
    More,
    /// They are.
    Yes,
}

/// A TLS version on the wire (`0x0301` is TLS 1.0 ... `0x0304` TLS 1.3).
pub type WireVersion = u16;

/// What a ClientHello says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// The `server_name` extension's host name, if any.
    pub sni: Option<String>,
    /// The versions the client offers: its `supported_versions` extension when present,
    /// otherwise every version from TLS 1.0 up to `legacy_version`. GREASE values are left out.
    pub versions: Vec<WireVersion>,
}

/// What a ServerHello says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerHello {
    /// The version the server chose: its `supported_versions` extension when present,
    /// otherwise `legacy_version`.
    pub version: WireVersion,
}

/// A credential sent in the clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Credential {
    /// HTTP `Authorization: Basic`.
    HttpBasic,
    /// An HTTP form or query field named like a password (`password`, `passwd`, `pwd`, `pass`...).
    HttpForm,
    /// A PostgreSQL PasswordMessage answering AuthenticationCleartextPassword.
    PostgresqlCleartext,
    /// A PostgreSQL PasswordMessage answering AuthenticationMD5Password.
    PostgresqlMd5,
    /// A Redis `AUTH` (or `HELLO ... AUTH`) command.
    RedisAuth,
    /// An SMTP `AUTH` command before STARTTLS.
    SmtpAuth,
    /// MySQL's `mysql_clear_password` authentication plugin.
    MysqlCleartext,
}

impl Credential {
    /// The name used in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::HttpBasic => "http_basic",
            Credential::HttpForm => "http_form_password",
            Credential::PostgresqlCleartext => "postgresql_cleartext",
            Credential::PostgresqlMd5 => "postgresql_md5",
            Credential::RedisAuth => "redis_auth",
            Credential::SmtpAuth => "smtp_auth",
            Credential::MysqlCleartext => "mysql_clear_password",
        }
    }
}

/// An operator's rule for web logins that do not answer 401: a request to `path` (the path of
/// the request target, without its query) answered with `status` is a failed login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRule {
    /// The method, such as `POST`; `None` matches any.
    pub method: Option<String>,
    /// The exact path, such as `/login`.
    pub path: String,
    /// The status of a failed attempt, such as 200 (the form again) or 302 (back to the form).
    pub status: u16,
}

/// What a parser may need from the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    /// The web login rules (HTTP only).
    pub login_rules: &'a [LoginRule],
}

/// How far a parser got with a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    /// It needs more bytes to report everything it looks for.
    #[default]
    More,
    /// It has seen all it looks for; the flow's later bytes need no parsing.
    Done,
    /// The flow switched to TLS (STARTTLS, PostgreSQL's SSLRequest answered `S`, MySQL's SSL
    /// request): what follows is encrypted, and credentials in it are not in the clear.
    Encrypted,
    /// The bytes claimed to be this protocol and then broke its rules.
    Malformed,
}

/// What a parser found in a flow it identified.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Analysis {
    /// Whether it needs more bytes.
    pub progress: Progress,
    /// The ClientHello, once complete (TLS only).
    pub client_hello: Option<ClientHello>,
    /// The ServerHello, once complete (TLS only).
    pub server_hello: Option<ServerHello>,
    /// The first credential sent in the clear, if any.
    pub credential: Option<Credential>,
    /// Failed logins the server answered, in the bytes seen so far.
    pub auth_failures: u32,
}

/// What one segment of a flow whose analysis is done says on its own: the requests and answers
/// that repeat on a kept-alive connection (another HTTP request, another Redis `AUTH`, another
/// SMTP `535`), checked without reassembly at the start of each segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Watch {
    /// A credential in the clear starts in this segment.
    pub credential: Option<Credential>,
    /// A failed-login answer starts in this segment.
    pub auth_failure: bool,
}
