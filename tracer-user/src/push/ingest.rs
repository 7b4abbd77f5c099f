//! One request of Pyroscope's ingest API: `POST /ingest?name=SERVICE{labels}&from&until&
//! format=pprof` with the gzipped pprof profile as the `profile` part of a
//! `multipart/form-data` body (the server's HTTP API reference, "pprof format").
//!
//! Pure: the request is plain data, so unit tests check it and the integration test's
//! loopback receiver reads exactly this.

use super::labels::Labels;

/// The multipart boundary: fixed, and not a byte sequence a gzip stream is likely to hold
/// at a line start; [`body`] checks anyway.
const BOUNDARY: &str = "leakhound-pprof-7d3b1c9e4f2a";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestRequest {
    pub url: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// The request for one profile covering `[from, until]` (UNIX seconds).
pub fn request(
    base: &str,
    labels: &Labels,
    from: u64,
    until: u64,
    pprof_gz: &[u8],
) -> IngestRequest {
    let name = labels.pyroscope_name();
    let url = format!(
        "{}/ingest?name={}&from={from}&until={until}&format=pprof&spyName=leakhound",
        base.trim_end_matches('/'),
        percent_encode(&name),
    );
    IngestRequest {
        url,
        content_type: format!("multipart/form-data; boundary={BOUNDARY}"),
        body: body(pprof_gz),
    }
}

fn body(pprof_gz: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(pprof_gz.len() + 256);
    body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
    body.extend_from_slice(
        b"Content-Disposition: form-data; name=\"profile\"; filename=\"profile.pb.gz\"\r\n",
    );
    body.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
    body.extend_from_slice(pprof_gz);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Everything but unreserved characters percent-encoded (RFC 3986).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_the_service_with_its_labels() {
        let labels = Labels {
            service: "api".into(),
            pairs: vec![
                ("host".into(), "node-1".into()),
                ("pid".into(), "42".into()),
            ],
        };
        let req = request("http://127.0.0.1:4040/", &labels, 10, 20, b"GZ");
        assert_eq!(
            req.url,
            "http://127.0.0.1:4040/ingest?name=api%7Bhost%3Dnode-1%2Cpid%3D42%7D&from=10&until=20&format=pprof&spyName=leakhound"
        );
        let body = String::from_utf8_lossy(&req.body);
        assert!(body.starts_with(&format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"profile\""
        )));
        assert!(body.contains("\r\n\r\nGZ\r\n"));
        assert!(body.ends_with(&format!("--{BOUNDARY}--\r\n")));
    }
}
