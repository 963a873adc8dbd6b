//! The page's HTML: tiles, the two SVG charts and the tables, rendered
//! from one [`View`]. Every string from the cluster goes through [`esc`].

use super::*;

/// Escapes text for HTML content and quoted attribute values.
pub fn esc(text: &str) -> String {
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

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub(super) fn duration(ms: u64) -> String {
    match ms {
        u64::MAX => "never".into(),
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{} s", ms / 1_000),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        7_200_000..172_800_000 => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

fn rate(per_s: f64) -> String {
    if per_s >= 100.0 {
        format!("{per_s:.0}/s")
    } else {
        format!("{per_s:.1}/s")
    }
}

/// `HH:MM:SS UTC`: no time zone database here, and operators compare
/// with logs in UTC anyway.
fn clock(unix_ms: u64) -> String {
    let s = unix_ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 100.0 / whole as f64).clamp(0.0, 100.0)
    }
}

fn state_class(state: &str) -> &'static str {
    match state {
        "up" | "healthy" | "leader" => "ok",
        "suspect" | "degraded" => "warn",
        "down" | "critical" => "bad",
        "drained" => "info",
        _ => "muted",
    }
}

pub(super) fn page(out: &mut String, view: &View) {
    out.push_str(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
    );
    w!(
        out,
        "<title>{} · Tessera</title>\n<noscript><meta http-equiv=\"refresh\" content=\"{}\"></noscript>\n",
        title(view.health),
        REFRESH_MS / 1000 * 2
    );
    w!(out, "<style>\n{STYLE}</style>\n</head>\n<body>\n");
    w!(
        out,
        "<main id=\"status\" data-refresh-ms=\"{REFRESH_MS}\">\n"
    );
    fragment(out, view);
    out.push_str(
        "</main>\n<p id=\"stale\" class=\"stale\" role=\"status\" hidden></p>\n\
         <script src=\"status.js\"></script>\n</body>\n</html>\n",
    );
}

fn title(health: &str) -> &'static str {
    match health {
        "healthy" => "Healthy",
        "degraded" => "Degraded",
        "critical" => "Critical",
        _ => "Unknown",
    }
}

/// The page's body: what `/fragment` answers and the script swaps in.
pub(super) fn fragment(out: &mut String, view: &View) {
    let status = &view.status;
    w!(
        out,
        "<header class=\"top\"><h1>Tessera</h1>\
         <span id=\"health\" class=\"badge {}\" data-health=\"{}\">{}</span></header>\n",
        state_class(view.health),
        view.health,
        title(view.health)
    );
    let whose = if view.proxied {
        format!(
            "Metaserver {} (a follower) shows the leader's view, fetched from metaserver {} over RPC.",
            view.served_by, status.answered_by.0
        )
    } else if status.leader == Some(status.answered_by) {
        format!("Served by metaserver {}, the leader.", view.served_by)
    } else {
        format!("Metaserver {}'s own view.", view.served_by)
    };
    w!(
        out,
        "<p class=\"sub\" id=\"served\" data-served-by=\"{}\" data-answered-by=\"{}\" data-proxied=\"{}\">{} \
         Updated {}; refreshes every {} s.</p>\n",
        view.served_by,
        status.answered_by.0,
        view.proxied,
        esc(&whose),
        clock(view.generated_ms),
        REFRESH_MS / 1000
    );
    for note in &view.notes {
        w!(out, "<p class=\"note warn\">{}</p>\n", esc(note));
    }
    if !view.problems.is_empty() {
        out.push_str("<ul id=\"problems\" class=\"problems\">");
        for problem in &view.problems {
            w!(out, "<li>{}</li>", esc(problem));
        }
        out.push_str("</ul>\n");
    }
    tiles(out, view);
    charts(out, view);
    metaservers(out, status);
    chunkservers(out, view);
    redundancy(out, status);
    sessions(out, view);
}

/// One summary tile: a label, a value and an optional line under it.
fn tile(out: &mut String, id: &str, label: &str, value: &str, sub: &str, class: &str) {
    w!(
        out,
        "<div class=\"tile {class}\" id=\"tile-{id}\"><div class=\"k\">{label}</div><div class=\"v\">{}</div>",
        esc(value)
    );
    if !sub.is_empty() {
        w!(out, "<div class=\"s\">{}</div>", esc(sub));
    }
    out.push_str("</div>");
}

fn tiles(out: &mut String, view: &View) {
    let status = &view.status;
    let r = &status.redundancy;
    let total = status.chunkservers.len();
    let up = status
        .chunkservers
        .iter()
        .filter(|c| c.state == "up")
        .count();
    let (capacity, free) = live_space(status);
    let used = capacity.saturating_sub(free);
    let or_dash = |n: Option<u64>| n.map_or_else(|| "–".to_string(), |n| n.to_string());
    out.push_str("<section class=\"tiles\" aria-label=\"Summary\">");
    match status.leader {
        Some(leader) => tile(
            out,
            "leader",
            "Leader",
            &format!("metaserver {}", leader.0),
            &format!("term {}", status.term),
            "",
        ),
        None => tile(
            out,
            "leader",
            "Leader",
            "none",
            &format!("term {}", status.term),
            "bad",
        ),
    }
    tile(
        out,
        "applied",
        "Applied index",
        &or_dash(status.applied_index),
        "",
        "",
    );
    tile(
        out,
        "chunkservers",
        "Chunkservers up",
        &format!("{up} of {total}"),
        "",
        if up == total && total > 0 { "" } else { "warn" },
    );
    tile(
        out,
        "capacity",
        "Capacity used",
        &format!("{:.0}%", percent(used, capacity)),
        &format!("{} of {}", bytes(used), bytes(capacity)),
        "",
    );
    tile(
        out,
        "files",
        "File data",
        &bytes(status.namespace.file_bytes),
        &plural(status.namespace.inodes, "inode", "inodes"),
        "",
    );
    tile(
        out,
        "chunks",
        "Chunks",
        &r.chunks.to_string(),
        &format!("{} below full redundancy", r.degraded),
        if r.unavailable > 0 {
            "bad"
        } else if r.degraded > 0 {
            "warn"
        } else {
            ""
        },
    );
    tile(
        out,
        "repair",
        "Repair queue",
        &r.queue_length.to_string(),
        &plural(r.jobs_running, "job running", "jobs running"),
        "",
    );
    let sessions = view.sessions.as_ref().map(|s| s.len() as u64);
    tile(out, "sessions", "Sessions", &or_dash(sessions), "", "");
    out.push_str("</section>\n");
}

pub(super) fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// One line of a chart: samples, its CSS class and whether it is filled
/// down to zero.
struct Line {
    class: &'static str,
    area: bool,
    points: Vec<(u64, f64)>,
}

/// What the charts span: the history there is, from a minute (so the
/// first samples of a new member draw a line, not a sliver at the edge) to
/// an hour.
fn window_ms(history: &[Sample], end_ms: u64) -> u64 {
    let hour = SAMPLE_INTERVAL.as_millis() as u64 * HISTORY_LEN as u64;
    history
        .first()
        .map_or(hour, |first| end_ms.saturating_sub(first.at_ms))
        .clamp(60_000, hour)
}

/// An inline SVG of `lines` over `span_ms` before `end_ms`, scaled to the
/// largest value; a gap of more than three sample intervals breaks a line.
fn svg(out: &mut String, id: &str, label: &str, lines: &[Line], span_ms: u64, end_ms: u64) {
    const W: f64 = 600.0;
    const H: f64 = 120.0;
    let span = span_ms.max(1);
    let start = end_ms.saturating_sub(span);
    let max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let x = |at: u64| (at.saturating_sub(start) as f64 / span as f64 * W).clamp(0.0, W);
    let y = |v: f64| H - (v / top * H).clamp(0.0, H);
    w!(
        out,
        "<svg class=\"chart\" id=\"{id}\" viewBox=\"0 0 {W} {H}\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{}\">",
        esc(label)
    );
    for i in 1..4 {
        let gy = H * f64::from(i) / 4.0;
        w!(
            out,
            "<line class=\"grid\" x1=\"0\" y1=\"{gy}\" x2=\"{W}\" y2=\"{gy}\" vector-effect=\"non-scaling-stroke\"/>"
        );
    }
    let gap = SAMPLE_INTERVAL.as_millis() as u64 * 3;
    for line in lines {
        let mut runs: Vec<Vec<(u64, f64)>> = Vec::new();
        for point in &line.points {
            match runs.last_mut() {
                Some(run) if run.last().is_some_and(|last| point.0 - last.0 < gap) => {
                    run.push(*point)
                }
                _ => runs.push(vec![*point]),
            }
        }
        for run in runs.iter().filter(|r| r.len() > 1) {
            let path: Vec<String> = run
                .iter()
                .map(|(at, v)| format!("{:.1},{:.1}", x(*at), y(*v)))
                .collect();
            if line.area {
                let (first, last) = (run[0].0, run[run.len() - 1].0);
                w!(
                    out,
                    "<polygon class=\"area-{}\" points=\"{:.1},{H} {} {:.1},{H}\"/>",
                    line.class,
                    x(first),
                    path.join(" "),
                    x(last)
                );
            }
            w!(
                out,
                "<polyline class=\"line-{}\" points=\"{}\" vector-effect=\"non-scaling-stroke\"/>",
                line.class,
                path.join(" ")
            );
        }
    }
    out.push_str("</svg>");
}

fn charts(out: &mut String, view: &View) {
    let history = &view.history;
    let span = window_ms(history, view.generated_ms);
    let window = duration(span);
    out.push_str("<section class=\"charts\" id=\"charts\">");
    let last = history.last();
    // Capacity: used (filled) under the total.
    w!(
        out,
        "<figure id=\"chart-capacity\"><figcaption>Capacity, last {window}: "
    );
    match last {
        Some(s) => w!(
            out,
            "<b>{}</b> used of <b>{}</b>",
            bytes(s.used_bytes),
            bytes(s.capacity_bytes)
        ),
        None => out.push_str("no samples yet"),
    }
    out.push_str("</figcaption>");
    if history.len() > 1 {
        let lines = [
            Line {
                class: "cap",
                area: false,
                points: history
                    .iter()
                    .map(|s| (s.at_ms, s.capacity_bytes as f64))
                    .collect(),
            },
            Line {
                class: "used",
                area: true,
                points: history
                    .iter()
                    .map(|s| (s.at_ms, s.used_bytes as f64))
                    .collect(),
            },
        ];
        svg(
            out,
            "svg-capacity",
            "capacity used and total",
            &lines,
            span,
            view.generated_ms,
        );
    } else {
        empty_chart(out);
    }
    out.push_str("</figure>");

    // Throughput: Raft entries applied per second (many commands each).
    let points: Vec<(u64, f64)> = history
        .iter()
        .filter_map(|s| s.commits_per_s.map(|r| (s.at_ms, r)))
        .collect();
    w!(
        out,
        "<figure id=\"chart-commits\"><figcaption>Raft commits, last {window}: "
    );
    match points.last() {
        Some((_, now)) => {
            let peak = points.iter().map(|p| p.1).fold(0.0f64, f64::max);
            w!(out, "<b>{}</b> now, peak <b>{}</b>", rate(*now), rate(peak));
        }
        None => out.push_str("no samples yet"),
    }
    out.push_str("</figcaption>");
    if points.len() > 1 {
        svg(
            out,
            "svg-commits",
            "Raft entries applied per second",
            &[Line {
                class: "commits",
                area: true,
                points,
            }],
            span,
            view.generated_ms,
        );
    } else {
        empty_chart(out);
    }
    out.push_str("</figure></section>\n");
}

fn empty_chart(out: &mut String) {
    w!(
        out,
        "<p class=\"chart-empty\">A sample every {} s; the chart starts with the second.</p>",
        SAMPLE_INTERVAL.as_secs()
    );
}

fn metaservers(out: &mut String, status: &StatusReply) {
    let leader_index = status
        .members
        .iter()
        .find(|m| Some(m.node) == status.leader)
        .and_then(|m| m.matched_index);
    let leads = status.leader == Some(status.answered_by);
    w!(
        out,
        "<section id=\"metaservers\" data-count=\"{}\"><h2>Metaservers</h2>\
         <div class=\"scroll\"><table><thead><tr><th class=\"n\">Node</th><th>Address</th><th>Role</th>\
         <th class=\"n hide-s\">Matched index</th><th class=\"n\">Lag</th><th class=\"n\">Last contact</th></tr></thead><tbody>",
        status.members.len()
    );
    for m in &status.members {
        let lag = match (leads, leader_index, m.matched_index) {
            (true, Some(top), Some(at)) => top.saturating_sub(at).to_string(),
            _ => "–".into(),
        };
        let contact = match (leads, m.last_contact_ms) {
            (true, Some(ms)) => duration(ms),
            (true, None) => "never".into(),
            _ => "–".into(),
        };
        w!(
            out,
            "<tr class=\"metaserver\" data-node=\"{}\" data-role=\"{}\"><td class=\"n\">{}</td><td>{}</td>\
             <td><span class=\"badge {}\">{}</span></td><td class=\"n hide-s\">{}</td><td class=\"n\">{lag}</td><td class=\"n\">{contact}</td></tr>",
            m.node.0,
            esc(&m.role),
            m.node.0,
            esc(&m.address),
            state_class(&m.role),
            esc(&m.role),
            m.matched_index
                .map_or_else(|| "–".to_string(), |i| i.to_string()),
        );
    }
    out.push_str("</tbody></table></div>");
    if !leads {
        out.push_str("<p class=\"hint\">Lag and last contact are known only to the leader.</p>");
    }
    out.push_str("</section>\n");
}

fn chunkservers(out: &mut String, view: &View) {
    let status = &view.status;
    let up = status
        .chunkservers
        .iter()
        .filter(|c| c.state == "up")
        .count();
    w!(
        out,
        "<section id=\"chunkservers\" data-count=\"{}\" data-up=\"{up}\"><h2>Chunkservers</h2>",
        status.chunkservers.len()
    );
    if status.chunkservers.is_empty() {
        out.push_str("<p class=\"hint\">No chunkserver has registered.</p></section>\n");
        return;
    }
    out.push_str(
        "<div class=\"scroll\"><table><thead><tr><th class=\"n\">Node</th><th>Name</th>\
         <th class=\"hide-s\">Address</th><th class=\"hide-s\">Zone / rack</th><th>State</th>\
         <th>Used / capacity</th><th class=\"n\" title=\"reads / writes in flight\">Load r/w</th>\
         <th class=\"n\">Pieces</th><th class=\"n hide-s\" title=\"pieces the chunk map places here\">Mapped</th>\
         <th class=\"n\">Heartbeat</th></tr></thead><tbody>",
    );
    for cs in &status.chunkservers {
        let used = cs.capacity_bytes.saturating_sub(cs.free_bytes);
        let pct = percent(used, cs.capacity_bytes);
        let load = view.load.get(&cs.node.0).map_or_else(
            || "–".to_string(),
            |l| format!("{} / {}", l.reads_in_flight, l.writes_in_flight),
        );
        let place = match (cs.zone.as_str(), cs.rack.as_str()) {
            ("", "") => "–".to_string(),
            (zone, rack) => format!("{} / {}", or_dash(zone), or_dash(rack)),
        };
        let silent = if cs.alive || cs.state == "suspect" || cs.state == "down" {
            ""
        } else {
            " <span class=\"muted\">(silent)</span>"
        };
        w!(
            out,
            "<tr class=\"chunkserver\" id=\"chunkserver-{}\" data-node=\"{}\" data-name=\"{}\" data-state=\"{}\" data-alive=\"{}\">\
             <td class=\"n\">{}</td><td>{}</td><td class=\"hide-s\">{}</td><td class=\"hide-s\">{}</td>\
             <td><span class=\"badge {}\">{}</span>{silent}</td>\
             <td><span class=\"bar\"><span style=\"width:{pct:.0}%\"></span></span><span class=\"hide-s\">{} / {}</span><span class=\"show-s\">{pct:.0}%</span></td>\
             <td class=\"n\">{load}</td><td class=\"n\">{}</td><td class=\"n hide-s\">{}</td><td class=\"n\">{}</td></tr>",
            cs.node.0,
            cs.node.0,
            esc(&cs.name),
            esc(&cs.state),
            cs.alive,
            cs.node.0,
            esc(&cs.name),
            esc(&cs.address),
            esc(&place),
            state_class(&cs.state),
            esc(&cs.state),
            bytes(used),
            bytes(cs.capacity_bytes),
            cs.pieces,
            cs.mapped_pieces,
            duration(cs.last_heartbeat_ms_ago),
        );
    }
    out.push_str("</tbody></table></div>");
    if view.load.is_empty() {
        out.push_str("<p class=\"hint\">Load is known only to the leader's memory.</p>");
    }
    out.push_str("</section>\n");
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() { "–" } else { text }
}

fn redundancy(out: &mut String, status: &StatusReply) {
    let r = &status.redundancy;
    out.push_str("<section id=\"redundancy\"><h2>Redundancy and repair</h2>");
    if !r.from_leader {
        out.push_str(
            "<p class=\"hint\">Only the leader assesses redundancy; this view has none.</p></section>\n",
        );
        return;
    }
    let width = r.rows.iter().map(|row| row.chunks.len()).max().unwrap_or(0);
    if r.rows.is_empty() {
        out.push_str("<p class=\"hint\">No chunks yet.</p>");
    } else {
        out.push_str(
            "<div class=\"scroll\"><table id=\"redundancy-table\"><thead><tr><th>Policy</th><th class=\"n\">Needed</th>",
        );
        for p in 0..width {
            w!(out, "<th class=\"n\">{p} ok</th>");
        }
        out.push_str("</tr></thead><tbody>");
        for row in &r.rows {
            let policy = row.policy.to_string();
            w!(
                out,
                "<tr data-policy=\"{}\"><td>{}</td><td class=\"n\">{}</td>",
                esc(&policy),
                esc(&policy),
                row.needed
            );
            let full = row.chunks.len().saturating_sub(1);
            for p in 0..width {
                match row.chunks.get(p) {
                    None => out.push_str("<td></td>"),
                    Some(0) => out.push_str("<td class=\"n muted\">0</td>"),
                    Some(n) => {
                        let class = if p < row.needed as usize {
                            "bad"
                        } else if p == row.needed as usize && p < full {
                            "warn"
                        } else if p < full {
                            "info"
                        } else {
                            "ok"
                        };
                        w!(out, "<td class=\"n cell-{class}\">{n}</td>");
                    }
                }
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table></div>");
        out.push_str(
            "<p class=\"hint\">Committed chunks by how many of their pieces are healthy.</p>",
        );
    }
    w!(
        out,
        "<p id=\"redundancy-summary\">{}: {} below full redundancy, {} one failure from loss, \
         {} unreadable, {} misplaced.</p>",
        plural(r.chunks, "chunk", "chunks"),
        r.degraded,
        r.endangered,
        r.unavailable,
        r.misplaced
    );
    let eta = r.eta_s.map_or_else(String::new, |s| {
        format!(", full redundancy in about {}", duration(s * 1000))
    });
    w!(
        out,
        "<p id=\"repair\">Repair: {} queued, {}, {} repaired{eta}.</p>",
        plural(r.queue_length, "chunk", "chunks"),
        plural(r.jobs_running, "job running", "jobs running"),
        bytes_rate(r.repair_bytes_per_s)
    );
    let drains: Vec<_> = status
        .chunkservers
        .iter()
        .filter(|c| c.state == "drained")
        .collect();
    if !drains.is_empty() {
        out.push_str("<ul id=\"drains\">");
        for cs in drains {
            let left = if cs.mapped_pieces == 0 {
                "done: nothing left here, ready to remove".to_string()
            } else {
                format!(
                    "{} left to move",
                    plural(cs.mapped_pieces, "piece", "pieces")
                )
            };
            w!(
                out,
                "<li data-node=\"{}\">Drain of {} ({}): {}</li>",
                cs.node.0,
                cs.node.0,
                esc(&cs.name),
                left
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>\n");
}

fn bytes_rate(per_s: f64) -> String {
    if per_s.is_finite() && per_s > 0.0 {
        format!("{}/s", bytes(per_s as u64))
    } else {
        "0 B/s".into()
    }
}

fn sessions(out: &mut String, view: &View) {
    out.push_str("<section id=\"sessions\"><h2>Sessions</h2>");
    let Some(list) = &view.sessions else {
        out.push_str(
            "<p class=\"hint\">Sessions are listed by the leader, which did not answer.</p></section>\n",
        );
        return;
    };
    if list.is_empty() {
        out.push_str("<p class=\"hint\">No client holds a session.</p></section>\n");
        return;
    }
    let now_ns = tessera_proto::token::unix_now_ns();
    out.push_str(
        "<div class=\"scroll\"><table><thead><tr><th class=\"n\">ID</th><th>Kind</th><th>Host</th>\
         <th class=\"n hide-s\">PID</th><th class=\"hide-s\">Where</th><th class=\"n\">Age</th>\
         <th class=\"n\">Renewed</th><th class=\"n\">Handles</th><th class=\"n\">Locks</th></tr></thead><tbody>",
    );
    for s in list.iter().take(SESSIONS_SHOWN) {
        let age = now_ns.saturating_sub(s.opened_ns).max(0) as u64 / 1_000_000;
        w!(
            out,
            "<tr class=\"session\" data-session=\"{}\"><td class=\"n\">{}</td><td>{}</td><td>{}</td>\
             <td class=\"n hide-s\">{}</td><td class=\"hide-s where\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{} ago</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            s.id.0,
            s.id.0,
            s.info.kind.name(),
            esc(&s.info.host),
            s.info.pid,
            esc(&s.info.mount_point),
            duration(age),
            duration(s.renewed_ms_ago),
            s.handles,
            if s.waiting > 0 {
                format!("{} (+{} waiting)", s.locks, s.waiting)
            } else {
                s.locks.to_string()
            }
        );
    }
    out.push_str("</tbody></table></div>");
    if list.len() > SESSIONS_SHOWN {
        w!(
            out,
            "<p class=\"hint\">{} more in <a href=\"status.json\">status.json</a> and <code>tessera admin session list</code>.</p>",
            list.len() - SESSIONS_SHOWN
        );
    }
    out.push_str("</section>\n");
}
