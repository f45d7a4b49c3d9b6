//! `[notify]`: `cairn run` tells a monitor about itself. Pings in the style of healthchecks.io
//! (a POST to the `start` URL before the first step, to `success` or `failure` after the last,
//! with the run's summary as the body) and a `webhook` that gets the run's JSON summary. A
//! notification that cannot be delivered (after three tries, 10 s each) is a warning and goes
//! into the run's audit record; it never changes the run's outcome.

use std::time::Duration;

use cairn::run_config::NotifyConfig;

const TRIES: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Notifier {
    config: NotifyConfig,
    /// Each notification that could not be delivered, with why.
    pub failures: Vec<String>,
}

impl Notifier {
    pub fn new(config: &NotifyConfig) -> Notifier {
        Notifier { config: config.clone(), failures: Vec::new() }
    }

    pub fn started(&mut self, text: &str) {
        if let Some(url) = self.config.start.clone() {
            self.send("start", &url, "text/plain", text.as_bytes().to_vec());
        }
    }

    /// The end of the run: its ping (`success` when `ok`, else `failure`) with `text`, and the
    /// webhook with `summary`.
    pub fn ended(&mut self, ok: bool, text: &str, summary: &serde_json::Value) {
        let (which, url) = if ok { ("success", &self.config.success) } else { ("failure", &self.config.failure) };
        if let Some(url) = url.clone() {
            self.send(which, &url, "text/plain", text.as_bytes().to_vec());
        }
        if let Some(url) = self.config.webhook.clone() {
            self.send("webhook", &url, "application/json", summary.to_string().into_bytes());
        }
    }

    /// The failure ping, if there is one, sent by the thread of a signal that ends the run.
    pub fn on_signal(&self) {
        if let Some(url) = self.config.failure.clone() {
            super::super::signals::on_end(move |why| {
                if let Err(e) = post(&url, "text/plain", format!("cairn run: {why}").into_bytes()) {
                    errln!("warning: notification `failure` to {} not delivered: {e}", redact(&url));
                }
            });
        }
    }

    fn send(&mut self, which: &str, url: &str, content_type: &str, body: Vec<u8>) {
        if let Err(e) = post(url, content_type, body) {
            let failure = format!("notification `{which}` to {} not delivered: {e}", redact(url));
            errln!("warning: {failure}");
            self.failures.push(failure);
        }
    }
}

/// The URL's scheme and host alone: its user, password, path and query may each be the secret
/// of a ping service.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "(an invalid URL)".into() };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}/…")
}

/// POSTs `body` to `url`, up to [`TRIES`] times, 1 s then 2 s apart; a 2xx answer is success.
fn post(url: &str, content_type: &str, body: Vec<u8>) -> Result<(), String> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("no runtime: {e}"))?;
    let _context = runtime.enter();
    let client = reqwest::Client::builder().timeout(TIMEOUT).build().map_err(|e| e.to_string())?;
    let mut last = String::new();
    for attempt in 0..TRIES {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(1 << (attempt - 1)));
        }
        let request = client.post(url).header(reqwest::header::CONTENT_TYPE, content_type).body(body.clone());
        let sent = runtime.block_on(async { request.send().await });
        match sent {
            Ok(answer) if answer.status().is_success() => return Ok(()),
            Ok(answer) => last = format!("the server answered {}", answer.status()),
            // Without the URL: it may hold the ping service's secret.
            Err(e) => last = without_url(&e),
        }
    }
    Err(format!("{last} ({TRIES} tries)"))
}

fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_builder() {
        "invalid URL"
    } else {
        "the request failed"
    };
    let mut text = kind.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_scheme_and_host_of_a_url_are_shown() {
        assert_eq!(super::redact("https://hc-ping.com/5f0d-secret"), "https://hc-ping.com/…");
        assert_eq!(super::redact("https://user:pw@example.com:8443/p?q=1"), "https://example.com:8443/…");
        assert_eq!(super::redact("https://example.com?token=secret"), "https://example.com/…");
        assert_eq!(super::redact("http://h#frag"), "http://h/…");
        assert_eq!(super::redact("not a url"), "(an invalid URL)");
    }
}
