//! `waymark serve` with many scheduled streams: how late runs start after their due time,
//! the CPU it uses while idle between waves, and its memory.
//!
//! `cargo bench --bench serve` (defaults: 1000 streams in 100 workflow files, every minute,
//! against the sandbox's `/orders` with 20 records, 3 waves). `WAYMARK_BENCH_STREAMS`,
//! `WAYMARK_BENCH_WAVES` and `WAYMARK_BENCH_CONCURRENT` change them. It takes about
//! `waves + 1` minutes: due times are minute boundaries.

mod support;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{env, runs, sandbox, serve, Result};

fn write_flows(dir: &Path, streams: u64) -> Result {
    let per_file = 10;
    for file in 0..streams.div_ceil(per_file) {
        let mut text = format!(
            "[sync]\nname = \"s{file}\"\nschedule = {{ every = \"1m\" }}\n\n[source]\n\
             kind = \"http\"\nbase_url = \"${{WAYMARK_SANDBOX_URL}}\"\n"
        );
        for i in 0..per_file.min(streams - file * per_file) {
            text.push_str(&format!(
                "\n[[stream]]\nname = \"t{i}\"\npath = \"/orders\"\nrecords = \"data\"\n\
                 primary_key = \"id\"\ncursor_field = \"updated_at\"\npage_size = 50\n\
                 pagination = {{ kind = \"cursor\", cursor_path = \"next_cursor\", \
                 cursor_param = \"cursor\", limit_param = \"limit\" }}\n"
            ));
        }
        text.push_str(&format!(
            "\n[destination]\nkind = \"sqlite\"\npath = \"s{file}.db\"\n"
        ));
        std::fs::write(dir.join(format!("s{file}.toml")), text)?;
    }
    Ok(())
}

/// CPU time (user + system) of a process, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').ok_or("stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn memory_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .ok_or("no such field")?;
    Ok(line.split_whitespace().nth(1).ok_or("value")?.parse()?)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sleeps until `at` (ms since the epoch).
fn sleep_until(at: u64) {
    let now = now_ms();
    if at > now {
        std::thread::sleep(Duration::from_millis(at - now));
    }
}

fn started_ms(run: &serde_json::Value) -> Option<u64> {
    let text = run["started"].as_str()?;
    let t = humantime::parse_rfc3339(text).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() -> Result {
    let streams = env("WAYMARK_BENCH_STREAMS", 1000);
    let waves = env("WAYMARK_BENCH_WAVES", 3);
    let concurrent = env("WAYMARK_BENCH_CONCURRENT", 4);
    let dir = std::env::temp_dir().join(format!("waymark-bench-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    write_flows(&dir, streams)?;
    let (_sandbox, url) = sandbox(&["--records", "20"])?;
    let state = dir.join("state");
    let began = Instant::now();
    let serving = serve(&dir, ".", concurrent, &state, &url)?;
    let pid = serving.0.id();

    // The first wave (every stream never ran: due at once), then `waves` minute waves;
    // the idle CPU is measured from 40 s to 58 s past each minute.
    let mut idle = Vec::new();
    let minute = 60_000;
    let first_boundary = (now_ms() / minute + 1) * minute;
    for wave in 0..waves {
        let boundary = first_boundary + wave * minute;
        sleep_until(boundary + 40_000);
        let (ticks, at) = (cpu_ticks(pid)?, Instant::now());
        sleep_until(boundary + 58_000);
        let spent = cpu_ticks(pid)? - ticks;
        idle.push(spent as f64 / 100.0 / at.elapsed().as_secs_f64() * 100.0);
    }
    let peak = memory_kib(pid, "VmHWM:")?;
    let rss = memory_kib(pid, "VmRSS:")?;
    drop(serving);

    let all = runs(&state)?;
    let mut delays: Vec<u64> = Vec::new();
    let mut waves_seen = std::collections::BTreeMap::<u64, u64>::new();
    for run in &all {
        let Some(started) = started_ms(run) else {
            continue;
        };
        if started < first_boundary {
            continue; // the first wave: due at start, not at a boundary
        }
        let boundary = started / minute * minute;
        delays.push(started - boundary);
        *waves_seen.entry(boundary).or_default() += 1;
    }
    delays.sort_unstable();
    let failed = all.iter().filter(|r| r["status"] != "completed").count();
    println!(
        "serve: {streams} streams every minute, at most {concurrent} runs at once, {} runs \
         in {:.0} s ({failed} not completed); runs per wave: {:?}",
        all.len(),
        began.elapsed().as_secs_f64(),
        waves_seen.values().collect::<Vec<_>>()
    );
    println!(
        "start delay after the due time: p50 {} ms, p99 {} ms, max {} ms",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or(0)
    );
    println!(
        "CPU while idle between waves: {} % of one core",
        idle.iter()
            .map(|c| format!("{c:.2}"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    println!(
        "memory: peak RSS {:.1} MiB, RSS at the end {:.1} MiB",
        peak as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
