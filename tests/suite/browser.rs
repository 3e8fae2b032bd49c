//! The browser harness itself: a real headless Chromium fills in a form served by a tiny HTTP
//! server, submits it with a real click and sees the server's answer, on the host's loopback and
//! across a veth pair between two network namespaces.
//!
//! The form records whether the page saw trusted input: the `input` event of the typed field and
//! the `click` of the button write their `isTrusted` into hidden fields that are posted with it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use crmguard_lab::browser::{Browser, Page};
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;

/// Loading a page from a server on the same machine takes well under this.
const LOAD: Duration = Duration::from_secs(15);
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

fn require_tools() -> Result<()> {
    privileged::require_tools(&[("chromium", "chromium")])
}

/// A one-page HTTP/1.1 server: `GET` returns the form, `POST` the form again with the posted
/// fields echoed; anything else is a 404. One thread per connection, so Chromium's speculative
/// idle connections cannot hold up the next request. Stops on drop.
struct FormServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FormServer {
    /// Serves on `listener`, which the caller bound (in whichever namespace it must live).
    fn start(listener: TcpListener) -> Result<FormServer> {
        let addr = listener.local_addr().context("the server's address")?;
        listener
            .set_nonblocking(true)
            .context("making the listener non-blocking")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("form-server-{}", addr.port()))
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            std::thread::spawn(move || {
                                if let Err(e) = serve(stream) {
                                    eprintln!("form server: {e:#}");
                                }
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => {
                            eprintln!("form server: accept: {e}");
                            return;
                        }
                    }
                }
            })
            .context("spawning the form server")?;
        Ok(FormServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for FormServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers the requests of one connection until the client closes it or idles for 10 s.
fn serve(stream: TcpStream) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut content_length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                bail!("connection closed inside the headers of {request_line:?}");
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().context("a bad Content-Length")?;
                }
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body)?;
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, page) = match (method, path) {
            ("GET", "/") => ("200 OK", form_page(&[])),
            ("POST", "/") => ("200 OK", form_page(&parse_form(&body))),
            _ => ("404 Not Found", "not found\n".to_owned()),
        };
        write!(
            writer,
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
             Content-Length: {}\r\nCache-Control: no-store\r\n\r\n{page}",
            page.len()
        )?;
        writer.flush()?;
    }
}

/// The form, with the fields of the previous submission (if any) echoed below it.
fn form_page(posted: &[(String, String)]) -> String {
    let field = |name: &str| {
        posted
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| escape(v))
            .unwrap_or_default()
    };
    let (result, trust) = if posted.is_empty() {
        ("nothing posted yet".to_owned(), String::new())
    } else {
        (
            format!("received {}", field("code")),
            format!("typed={} clicked={}", field("typed"), field("clicked")),
        )
    };
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>crmguard browser self-test</title></head>
<body>
<form method="post" action="/">
  <label>Code <input id="code" name="code" autocomplete="off"
    oninput="this.form.typed.value = String(event.isTrusted)"></label>
  <input type="hidden" name="typed" value="none">
  <input type="hidden" name="clicked" value="none">
  <button id="submit" type="submit"
    onclick="this.form.clicked.value = String(event.isTrusted)">Send</button>
</form>
<p id="result">{result}</p>
<p id="trust">{trust}</p>
</body></html>
"#
    )
}

/// `application/x-www-form-urlencoded` pairs.
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (url_decode(name), url_decode(value))
        })
        .collect()
}

fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Loads the form, types a code, clicks Send and checks what the server echoed and a screenshot.
fn fill_in_and_submit(page: &mut Page, url: &str) -> Result<()> {
    page.navigate(url, LOAD)?;
    ensure!(
        page.text("#result")? == "nothing posted yet",
        "the fresh form already shows a result"
    );
    page.type_into("#code", "123456")?;
    let typed = page.eval("document.querySelector('#code').value")?;
    ensure!(typed == "123456", "the field holds {typed} after typing");
    page.click("#submit")?;
    page.wait_for(
        "document.querySelector('#result').innerText.includes('123456')",
        LOAD,
    )
    .context("waiting for the server's answer to the submitted form")?;
    let result = page.text("#result")?;
    ensure!(result == "received 123456", "the page shows {result:?}");
    let trust = page.text("#trust")?;
    ensure!(
        trust == "typed=true clicked=true",
        "the page did not see trusted input: {trust:?}"
    );

    let png = page.screenshot_png()?;
    ensure!(
        png.starts_with(PNG_SIGNATURE),
        "the screenshot is not a PNG: starts with {:02x?}",
        &png[..png.len().min(8)]
    );
    // IHDR, the first chunk, holds the width and height (big-endian) at bytes 16..24.
    let dimension = |at: usize| -> Result<u32> {
        let bytes = png.get(at..at + 4).context("the PNG ends inside IHDR")?;
        Ok(u32::from_be_bytes(bytes.try_into()?))
    };
    let (width, height) = (dimension(16)?, dimension(20)?);
    ensure!(
        width > 0 && height > 0,
        "the screenshot is {width}x{height}"
    );
    eprintln!("screenshot of {url}: {} bytes, {width}x{height}", png.len());
    Ok(())
}

#[test]
fn a_form_is_typed_into_clicked_and_answered_on_loopback() -> Result<()> {
    if !privileged::require("browser::a_form_is_typed_into_clicked_and_answered_on_loopback") {
        return Ok(());
    }
    require_tools()?;
    let server = FormServer::start(TcpListener::bind("127.0.0.1:0")?)?;
    let mut browser = Browser::start(None)?;
    eprintln!("browser: {}", browser.product());
    let mut page = browser.page()?;
    fill_in_and_submit(&mut page, &server.url())
}

#[test]
fn a_browser_in_a_namespace_reaches_a_server_across_the_veth() -> Result<()> {
    if !privileged::require("browser::a_browser_in_a_namespace_reaches_a_server_across_the_veth") {
        return Ok(());
    }
    require_tools()?;
    let t = Topology::ipv4_only(160, 1)?;
    let listener = t
        .host
        .run_in(|| TcpListener::bind(SocketAddr::new(t.addrs.host4, 0)))??;
    let server = FormServer::start(listener)?;
    let mut browser = Browser::start(Some(t.out.name()))?;
    let mut page = browser.page()?;
    fill_in_and_submit(&mut page, &server.url())?;

    // The browser really is in `out`: the host's loopback is not reachable from there.
    let host_loopback = FormServer::start(TcpListener::bind("127.0.0.1:0")?)?;
    let err = page
        .navigate(&host_loopback.url(), LOAD)
        .expect_err("the host's loopback server is reachable from the namespace");
    ensure!(
        format!("{err:#}").contains("ERR_CONNECTION_REFUSED"),
        "unexpected error: {err:#}"
    );
    Ok(())
}

#[test]
fn a_failed_navigation_and_a_missing_element_are_errors() -> Result<()> {
    if !privileged::require("browser::a_failed_navigation_and_a_missing_element_are_errors") {
        return Ok(());
    }
    require_tools()?;
    // A port nothing listens on: bind one, then close it.
    let closed = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut browser = Browser::start(None)?;
    let mut page = browser.page()?;
    let err = page
        .navigate(&format!("http://{closed}/"), LOAD)
        .expect_err("navigating to a closed port succeeded");
    ensure!(
        format!("{err:#}").contains("ERR_CONNECTION_REFUSED"),
        "unexpected error: {err:#}"
    );
    let err = page
        .text("#nothing")
        .expect_err("a missing element has text");
    ensure!(
        format!("{err:#}").contains("no element matches #nothing"),
        "unexpected error: {err:#}"
    );
    let err = page
        .wait_for("false", Duration::from_millis(300))
        .expect_err("`false` came true");
    ensure!(
        format!("{err:#}").contains("timed out"),
        "unexpected error: {err:#}"
    );
    Ok(())
}

#[test]
fn form_bodies_are_decoded() {
    assert_eq!(
        parse_form(b"code=12+34%21&typed=true&empty="),
        vec![
            ("code".to_owned(), "12 34!".to_owned()),
            ("typed".to_owned(), "true".to_owned()),
            ("empty".to_owned(), String::new()),
        ]
    );
    assert_eq!(url_decode("100%"), "100%");
    assert_eq!(url_decode("%zz"), "%zz");
    assert_eq!(
        escape("<a href=\"x\">&</a>"),
        "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
    );
}
