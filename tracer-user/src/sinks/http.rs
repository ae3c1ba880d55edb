//! The metrics endpoint's HTTP server: as small and as bounded as a scrape target on every
//! node can be, so that nobody who can reach the port can hurt the tracer. At most
//! `MAX_CONNECTIONS` at once (more are closed at accept); a request head must arrive whole,
//! within `HEAD_LIMIT` bytes, in `REQUEST_TIMEOUT`; one request per connection
//! (`Connection: close`), answered within `REQUEST_TIMEOUT`. An idle connection therefore
//! holds a descriptor for seconds, not forever, and never more than `MAX_CONNECTIONS` of them.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

/// Connections served at once (a scraper needs one; a few for humans with curl).
pub const MAX_CONNECTIONS: usize = 16;
/// Longest request head read.
const HEAD_LIMIT: usize = 8192;
/// Time for a request head to arrive, and for the answer to be written.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// An answer: status line, content type, body.
pub struct Response {
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

/// Serves `answer(path)` on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, answer: Arc<dyn Fn(&str) -> Response + Send + Sync>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors, most likely: wait rather than spin; the sinks come first.
                tracing::debug!("metrics: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream); // over the limit: closed at once
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, one_request(stream, &*answer)).await;
            drop(slot);
        });
    }
}

/// Reads one request head and writes the answer.
async fn one_request(mut stream: TcpStream, answer: &(dyn Fn(&str) -> Response + Send + Sync)) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > HEAD_LIMIT {
            let _ = stream.write_all(&reply(&too_large())).await;
            return;
        }
    }
    let response = match parse_request_line(&head) {
        Some(("GET", path)) | Some(("HEAD", path)) => answer(path),
        Some(_) => Response {
            status: "405 Method Not Allowed",
            content_type: "text/plain",
            body: "only GET\n".into(),
        },
        None => Response {
            status: "400 Bad Request",
            content_type: "text/plain",
            body: "bad request\n".into(),
        },
    };
    let mut bytes = reply(&response);
    if parse_request_line(&head).is_some_and(|(method, _)| method == "HEAD") {
        bytes.truncate(bytes.len() - response.body.len());
    }
    let _ = stream.write_all(&bytes).await;
    let _ = stream.shutdown().await;
}

fn too_large() -> Response {
    Response {
        status: "431 Request Header Fields Too Large",
        content_type: "text/plain",
        body: "request head too large\n".into(),
    }
}

/// `GET /metrics HTTP/1.1` -> ("GET", "/metrics"), the query string cut off.
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    Some((method, target.split('?').next().unwrap_or(target)))
}

fn reply(response: &Response) -> Vec<u8> {
    format!(
        "HTTP/1.1 {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        response.status,
        response.content_type,
        response.body.len(),
        response.body
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(parse_request_line(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"\xff\xfe HTTP/1.1\r\n\r\n"), None);
    }

    #[tokio::test]
    async fn idle_and_excess_connections_are_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            Arc::new(|path: &str| Response {
                status: "200 OK",
                content_type: "text/plain",
                body: format!("{path}\n"),
            }),
        ));
        // Fill every slot with idle connections, then one more: closed at once.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        // Closed (EOF or a reset) rather than left waiting.
        let _closed = tokio::time::timeout(Duration::from_secs(2), extra.read_to_end(&mut buf))
            .await
            .expect("the connection over the limit is closed at once");
        // The idle ones are closed after the request timeout, and the slots serve again.
        let mut first = idle.remove(0);
        let ended = tokio::time::timeout(
            REQUEST_TIMEOUT + Duration::from_secs(2),
            first.read_to_end(&mut buf),
        )
        .await;
        assert!(ended.is_ok(), "an idle connection is closed");
        drop(idle);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut scrape = TcpStream::connect(addr).await.unwrap();
        scrape
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        scrape.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("/metrics\n"), "{answer}");
    }
}
