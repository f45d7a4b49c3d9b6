//! The status page at `/`: per source the newest snapshot and its age, the last good drill,
//! each offsite copy and its age, the last failure; a 30-day timeline of snapshots, drills and
//! failures; stored bytes and monthly cost per source. Server-rendered HTML with inline SVG, no
//! script, readable on a phone. Everything shown comes from `cairn status`'s reading of the
//! records ([`super::api::server_status`]) and the newest `stats` record of `cairn run`. Every
//! text that comes from the repository (source names, errors naming files) is escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hyper::StatusCode;

use super::{Reply, Server};
use cairn::format::audit::{AuditRecord, Outcome};
use cairn::status::{age_text, Status};

const DAYS: i64 = 30;
const DAY_MS: i64 = 86_400_000;

pub fn render(server: &Server) -> Reply {
    let read = super::api::server_status(server).and_then(|status| Ok((status, cairn::audit::read_all(&server.repo)?)));
    let (status, records) = match read {
        Ok(read) => read,
        Err(e) => {
            let body = format!(
                "{HEAD}<h1>cairn</h1><p class=fail>The repository cannot be read: {}</p></body></html>",
                escape(&e.to_string())
            );
            return Reply {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                content_type: "text/html; charset=utf-8",
                body: body.into_bytes(),
            };
        }
    };
    let now = crate::cli::status::now_ms().unwrap_or_else(|_| cairn::clock::now_ms());
    let mut html = String::from(HEAD);
    let healthy = status.healthy();
    let problems = status.problems.len() + status.sources.iter().map(|s| s.problems.len()).sum::<usize>();
    let _ = write!(
        html,
        "<header><h1>cairn</h1><p class=\"{}\" id=health>{}</p><p class=muted>{} · {} · {}</p></header>",
        if healthy { "ok" } else { "fail" },
        if healthy {
            "Healthy".to_string()
        } else {
            format!("{problems} problem{}", if problems == 1 { "" } else { "s" })
        },
        escape(&server.location),
        escape(&cairn::host::hostname()),
        crate::cli::format::utc(now / 1000),
    );
    sources(&mut html, &status);
    timeline(&mut html, &status, &records, now);
    storage(&mut html, server);
    let running: Vec<String> = server
        .jobs
        .list()
        .into_iter()
        .filter(|job| job.state.is_active())
        .map(|job| format!("{} {} ({:?}, for {})", job.kind, job.id, job.state, job.caller))
        .chain(status.running.iter().cloned())
        .collect();
    if !running.is_empty() || !status.problems.is_empty() {
        html.push_str("<h2>Now</h2><ul>");
        for item in &running {
            let _ = write!(html, "<li>running: {}</li>", escape(item));
        }
        for problem in &status.problems {
            let _ = write!(html, "<li class=fail>{}</li>", escape(problem));
        }
        html.push_str("</ul>");
    }
    html.push_str("</body></html>\n");
    Reply { status: StatusCode::OK, content_type: "text/html; charset=utf-8", body: html.into_bytes() }
}

const HEAD: &str = "<!doctype html><html lang=en><head><meta charset=utf-8>\
<meta name=viewport content=\"width=device-width,initial-scale=1\"><title>cairn status</title><style>\
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem;color:#1d2327}\
h1{margin:0;font-size:1.5rem}h2{font-size:1.1rem;margin:1.6rem 0 .5rem}header p{margin:.2rem 0}\
.ok{color:#17713a;font-weight:600}.fail{color:#b3261e;font-weight:600}.muted{color:#5f6b73}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.4rem .5rem;border-bottom:1px solid #dde3e7;vertical-align:top}\
th{font-size:.8rem;text-transform:uppercase;color:#5f6b73}svg{max-width:100%;height:auto}\
@media (max-width:640px){thead{display:none}tr{display:block;border-bottom:2px solid #dde3e7;padding:.4rem 0}\
td{display:block;border:0;padding:.15rem 0}td::before{content:attr(data-label) \": \";color:#5f6b73}}\
</style></head><body>";

/// Text for HTML, in element content and in quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn ago(seconds: i64) -> String {
    format!("{} ago", age_text(seconds.max(0)))
}

fn sources(html: &mut String, status: &Status) {
    html.push_str(
        "<h2>Sources</h2><table id=sources><thead><tr><th>Source</th><th>Newest snapshot</th><th>Last good drill</th>\
         <th>Offsite</th><th>Last failure</th></tr></thead><tbody>",
    );
    for source in &status.sources {
        let state = match (source.retired, source.problems.is_empty()) {
            (true, _) => "<span class=muted>retired</span>".to_string(),
            (false, true) => "<span class=ok>ok</span>".to_string(),
            (false, false) => format!("<span class=fail title=\"{}\">FAIL</span>", escape(&source.problems.join("; "))),
        };
        let newest = source.latest_snapshot.as_ref().map_or("<span class=fail>none</span>".to_string(), |e| {
            let id = e.snapshot.as_deref().unwrap_or("?");
            format!("{} <span class=muted>({})</span>", ago(e.age_seconds), escape(&clip(id, 8)))
        });
        let drill = source.last_drill_ok.as_ref().map_or("never".to_string(), |e| ago(e.age_seconds));
        let offsite: Vec<String> =
            source.offsite.iter().map(|copy| format!("{}: {}", escape(&copy.to), ago(copy.age_seconds))).collect();
        let failure = source.last_failure.as_ref().map_or("none".to_string(), |f| {
            format!("{} {}: <span class=muted>{}</span>", escape(&f.command), ago(f.age_seconds), escape(&f.error))
        });
        let _ = write!(
            html,
            "<tr class=source><td data-label=Source><b>{}</b> {state}<br><span class=muted>{} snapshot{}</span></td>\
             <td data-label=\"Newest snapshot\">{newest}</td><td data-label=\"Last good drill\">{drill}</td>\
             <td data-label=Offsite>{}</td><td data-label=\"Last failure\">{failure}</td></tr>",
            escape(&source.source),
            source.snapshots,
            if source.snapshots == 1 { "" } else { "s" },
            if offsite.is_empty() { "none".to_string() } else { offsite.join("<br>") },
        );
        for problem in &source.problems {
            let _ = write!(
                html,
                "<tr><td colspan=5 class=fail data-label=Problem>{}: {}</td></tr>",
                escape(&source.source),
                escape(problem)
            );
        }
    }
    html.push_str("</tbody></table>");
}

/// Per source and day (0 = today): good snapshots, good drills, failures.
type Days = BTreeMap<String, [[u32; 3]; DAYS as usize]>;

fn timeline(html: &mut String, status: &Status, records: &[AuditRecord], now: i64) {
    let mut days: Days = status.sources.iter().map(|s| (s.source.clone(), [[0; 3]; DAYS as usize])).collect();
    for record in records {
        let day = (now - record.ended_ms).div_euclid(DAY_MS);
        let Some(row) = days.get_mut(&record.source) else { continue };
        if !(0..DAYS).contains(&day) {
            continue;
        }
        let kind = match (record.command.as_str(), record.outcome) {
            ("snapshot", Outcome::Ok) => 0,
            ("drill", Outcome::Ok) => 1,
            ("start", _) => continue,
            (_, Outcome::Failed) => 2,
            _ => continue,
        };
        row[day as usize][kind] += 1;
    }
    let (label, cell, row_height) = (120, 20, 26);
    let width = label + cell * DAYS as usize + 10;
    let height = row_height * days.len() + 40;
    let _ = write!(
        html,
        "<h2>Last 30 days</h2><svg id=timeline role=img aria-label=\"snapshots, drills and failures per day\" \
         viewBox=\"0 0 {width} {height}\" width=\"{width}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"12\">"
    );
    for (n, (source, row)) in days.iter().enumerate() {
        let y = n * row_height + 18;
        let _ = write!(html, "<text x=\"0\" y=\"{}\">{}</text>", y + 4, escape(&clip(source, 16)));
        for (age, counts) in row.iter().enumerate() {
            let x = label + cell * (DAYS as usize - 1 - age);
            let _ =
                write!(html, "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"18\" fill=\"#f1f4f6\"/>", y - 9, cell - 2);
            let title = format!(
                "{} day{} ago: {} snapshot(s), {} drill(s), {} failure(s)",
                age,
                if age == 1 { "" } else { "s" },
                counts[0],
                counts[1],
                counts[2]
            );
            if counts[0] > 0 {
                let _ = write!(
                    html,
                    "<circle cx=\"{}\" cy=\"{y}\" r=\"5\" fill=\"#17713a\"><title>{title}</title></circle>",
                    x + 9
                );
            }
            if counts[1] > 0 {
                let _ = write!(
                    html,
                    "<rect x=\"{}\" y=\"{}\" width=\"6\" height=\"6\" fill=\"#1f5fbf\"><title>{title}</title></rect>",
                    x + 12,
                    y - 9
                );
            }
            if counts[2] > 0 {
                let _ = write!(
                    html,
                    "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"4\" fill=\"#b3261e\"><title>{title}</title></rect>",
                    y + 5,
                    cell - 2
                );
            }
        }
    }
    let legend = days.len() * row_height + 30;
    let _ = write!(
        html,
        "<circle cx=\"{label}\" cy=\"{}\" r=\"5\" fill=\"#17713a\"/><text x=\"{}\" y=\"{legend}\">snapshot</text>\
         <rect x=\"{}\" y=\"{}\" width=\"6\" height=\"6\" fill=\"#1f5fbf\"/><text x=\"{}\" y=\"{legend}\">drill</text>\
         <rect x=\"{}\" y=\"{}\" width=\"14\" height=\"4\" fill=\"#b3261e\"/><text x=\"{}\" y=\"{legend}\">failure</text>\
         <text x=\"{}\" y=\"{legend}\" text-anchor=\"end\">today</text></svg>",
        legend - 4,
        label + 8,
        label + 80,
        legend - 9,
        label + 90,
        label + 140,
        legend - 6,
        label + 158,
        width - 10,
    );
}

fn storage(html: &mut String, server: &Server) {
    let stats = match server.stats() {
        Ok(stats) => stats,
        Err(e) => {
            let _ = write!(
                html,
                "<h2>Storage</h2><p class=fail>The figures cannot be read: {}</p>",
                escape(&e.to_string())
            );
            return;
        }
    };
    let most = stats.sources.iter().map(|s| s.attributed_bytes).max().unwrap_or(0).max(1);
    let (label, bar, row_height) = (120usize, 300usize, 24usize);
    let width = label + bar + 180;
    let height = row_height * stats.sources.len() + 8;
    let _ = write!(
        html,
        "<h2>Storage</h2><p class=muted>{} in the repository; each source's share of it</p><svg id=storage role=img \
         aria-label=\"stored bytes per source\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" \
         xmlns=\"http://www.w3.org/2000/svg\" font-size=\"12\">",
        crate::cli::format::bytes(stats.repository_bytes)
    );
    for (n, source) in stats.sources.iter().enumerate() {
        let y = n * row_height + 4;
        let length = (source.attributed_bytes as f64 / most as f64 * bar as f64).round().max(1.0);
        let cost = source.monthly_cost.map_or(String::new(), |c| format!(", {c:.2}/month"));
        let _ = write!(
            html,
            "<text x=\"0\" y=\"{}\">{}</text><rect x=\"{label}\" y=\"{y}\" width=\"{length}\" height=\"16\" fill=\"#3b7d9c\"/>\
             <text x=\"{}\" y=\"{}\">{}{}</text>",
            y + 12,
            escape(&clip(&source.source, 16)),
            label as f64 + length + 6.0,
            y + 12,
            crate::cli::format::bytes(source.attributed_bytes),
            escape(&cost),
        );
    }
    html.push_str("</svg>");
}

fn clip(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_repository_cannot_become_markup() {
        assert_eq!(escape("<script>a&'b\"</script>"), "&lt;script&gt;a&amp;&#39;b&quot;&lt;/script&gt;");
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("äbc", 3), "äbc");
    }
}
