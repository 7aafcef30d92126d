//! A small HTTP service around the engine: one request is one prompt, the response is a PNG.
//! Standard library only (no web framework), so it shows the engine's API and nothing else.
//!
//! ```text
//! cargo run --release --example service -- 127.0.0.1:8080 [MODEL_DIR...]
//! curl -o fox.png 'http://127.0.0.1:8080/generate?prompt=a+red+fox&seed=7&id=job1'
//! curl 'http://127.0.0.1:8080/progress?id=job1'      # "prior 12/20"
//! curl 'http://127.0.0.1:8080/cancel?id=job1'        # the generate call answers 409
//! ```
//! Without model folders it serves the built-in tiny model (noise pictures).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use cascade::engine::{Engine, EngineConfig};
use cascade::pipeline::{CancelToken, Progress, Request};
use cascade::png_out::encode_png;
use cascade::Error;

/// A running request: its cancellation token and latest progress line.
type Job = (CancelToken, Arc<Mutex<String>>);

/// Running requests by id.
#[derive(Default)]
struct Jobs(Mutex<HashMap<String, Job>>);

struct Service {
    engine: Engine,
    jobs: Jobs,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or(""), 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(target: &str) -> (String, HashMap<String, String>) {
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let params = q
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect();
    (path.to_string(), params)
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &[u8]) {
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body));
}

impl Service {
    fn handle(&self, mut stream: TcpStream) {
        let mut line = String::new();
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => return,
        });
        if reader.read_line(&mut line).is_err() {
            return;
        }
        // Skip the headers.
        let mut header = String::new();
        while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
            header.clear();
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        if method != "GET" {
            return respond(&mut stream, "405 Method Not Allowed", "text/plain", b"use GET\n");
        }
        let (path, params) = query(target);
        let id = params.get("id").cloned().unwrap_or_default();
        match path.as_str() {
            "/generate" => self.generate(&mut stream, &params, id),
            "/progress" | "/cancel" => {
                let jobs = self.jobs.0.lock().unwrap_or_else(|p| p.into_inner());
                match jobs.get(&id) {
                    None => respond(&mut stream, "404 Not Found", "text/plain", format!("no running request '{id}'\n").as_bytes()),
                    Some((cancel, progress)) => {
                        if path == "/cancel" {
                            cancel.cancel();
                            respond(&mut stream, "200 OK", "text/plain", b"cancelling\n")
                        } else {
                            let p = progress.lock().unwrap_or_else(|p| p.into_inner()).clone();
                            respond(&mut stream, "200 OK", "text/plain", format!("{p}\n").as_bytes())
                        }
                    }
                }
            }
            _ => respond(&mut stream, "404 Not Found", "text/plain", b"GET /generate?prompt=..., /progress?id=..., /cancel?id=...\n"),
        }
    }

    fn generate(&self, stream: &mut TcpStream, params: &HashMap<String, String>, id: String) {
        let d = Request::default();
        let num = |k: &str, default: f64| {
            params.get(k).map_or(Ok(default), |v| v.parse::<f64>().map_err(|_| format!("{k}: '{v}' is not a number")))
        };
        let request = (|| -> Result<Request, String> {
            Ok(Request {
                prompt: params.get("prompt").cloned().ok_or("prompt is required")?,
                negative_prompt: params.get("negative_prompt").cloned().unwrap_or_default(),
                width: num("width", d.width as f64)? as usize,
                height: num("height", d.height as f64)? as usize,
                num_images: 1,
                prior_steps: num("prior_steps", d.prior_steps as f64)? as usize,
                prior_guidance: num("prior_guidance", d.prior_guidance as f64)? as f32,
                decoder_steps: num("decoder_steps", d.decoder_steps as f64)? as usize,
                decoder_guidance: num("decoder_guidance", d.decoder_guidance as f64)? as f32,
                seed: num("seed", 0.0)? as u64,
            })
        })();
        let request = match request {
            Ok(r) => r,
            Err(e) => return respond(stream, "400 Bad Request", "text/plain", format!("{e}\n").as_bytes()),
        };
        let cancel = CancelToken::new();
        let progress = Arc::new(Mutex::new("queued".to_string()));
        if !id.is_empty() {
            self.jobs.0.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), (cancel.clone(), progress.clone()));
        }
        let mut observer =
            |p: &Progress| *progress.lock().unwrap_or_else(|p| p.into_inner()) = format!("{:?} {}/{}", p.phase, p.step, p.total);
        let result = self.engine.generate(&request, Some(&mut observer), Some(&cancel));
        self.jobs.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        match result {
            Ok(out) => {
                let text = [("prompt", request.prompt.clone()), ("seed", out.seed.to_string())];
                match encode_png(&out.images[0], &text) {
                    Ok(png) => respond(stream, "200 OK", "image/png", &png),
                    Err(e) => respond(stream, "500 Internal Server Error", "text/plain", format!("{e}\n").as_bytes()),
                }
            }
            Err(Error::Cancelled) => respond(stream, "409 Conflict", "text/plain", b"cancelled\n"),
            Err(e @ Error::Shape(_)) => respond(stream, "400 Bad Request", "text/plain", format!("{e}\n").as_bytes()),
            Err(e) => respond(stream, "500 Internal Server Error", "text/plain", format!("{e}\n").as_bytes()),
        }
    }
}

fn serve(listener: TcpListener, service: Arc<Service>) {
    for stream in listener.incoming().flatten() {
        let s = service.clone();
        std::thread::spawn(move || s.handle(stream));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let model_dirs = args.map(Into::into).collect();
    let engine = match Engine::load(EngineConfig { model_dirs, ..Default::default() }) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    if engine.is_builtin() {
        eprintln!("serving the built-in tiny model with random weights (pictures are noise); pass model folders to serve real weights");
    }
    // On a GPU, capture the default request's step graphs and tune its GEMMs before listening,
    // so the first client does not wait for them.
    if !engine.device().is_cpu() {
        match engine.warm_up(&Request::default()) {
            Ok(t) => eprintln!("warmed up for 1024² requests in {:.1} s", t.as_secs_f64()),
            Err(e) => eprintln!("warning: the warm-up failed ({e}); the first request will capture and tune instead"),
        }
    }
    let listener = TcpListener::bind(&addr).unwrap_or_else(|e| {
        eprintln!("error: cannot listen on {addr}: {e}");
        std::process::exit(1)
    });
    eprintln!("listening on http://{addr} on {}", engine.device().describe());
    serve(listener, Arc::new(Service { engine, jobs: Jobs::default() }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: &str, target: &str) -> (String, Vec<u8>) {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (String::from_utf8_lossy(&buf[..split]).into_owned(), buf[split + 4..].to_vec())
    }

    #[test]
    fn one_request_end_to_end_on_the_cpu() {
        let engine = Engine::load(EngineConfig { device: "cpu".into(), ..Default::default() }).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let service = Arc::new(Service { engine, jobs: Jobs::default() });
        std::thread::spawn(move || serve(listener, service));

        let (head, body) = get(&addr, "/generate?prompt=a+red+fox%21&seed=3&width=128&height=128&prior_steps=2&decoder_steps=1&id=j1");
        assert!(head.starts_with("HTTP/1.1 200") && head.contains("image/png"), "{head}");
        assert_eq!(&body[..8], b"\x89PNG\r\n\x1a\n");
        let img = image::load_from_memory(&body).unwrap();
        assert_eq!((img.width(), img.height()), (128, 128));

        let (head, body) = get(&addr, "/generate?prompt=x&width=720");
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        assert!(String::from_utf8_lossy(&body).contains("nearest valid"));
        let (head, _) = get(&addr, "/cancel?id=nope");
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        assert_eq!(percent_decode("a+b%2Fc%zz"), "a b/c%zz");
    }
}
