//! The web view in a real browser: headless Chromium driven through chromedriver
//! (WebDriver) against `waymark serve` and the sandbox. Screenshots of each page go to
//! `target/web-screenshots/`. Without Chromium the tests say so loudly and pass; with
//! `WAYMARK_REQUIRE_BROWSER=1` (CI, which installs it) they fail instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

use crate::serve::{serve_with, terminate};
use crate::util::{
    journal, runs, stream_table, wait_for, wait_for_lock, waymark, write_workflow, Result, Sandbox,
    TempDir, CURSOR, ONCE,
};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver, or `None` (said loudly) when this machine has no Chromium and CI did not
/// ask for one.
fn driver() -> Result<Option<Driver>> {
    let driver = std::env::var("WAYMARK_CHROMEDRIVER").unwrap_or_else(|_| CHROMEDRIVER.into());
    if !Path::new(&driver).exists() || !Path::new(&chromium()).exists() {
        let why = format!(
            "no Chromium ({}) or chromedriver ({driver}): install Debian's chromium and \
             chromium-driver to run the browser tests",
            chromium()
        );
        if std::env::var("WAYMARK_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            return Err(why.into());
        }
        eprintln!("\n*** SKIPPED the browser test: {why} ***\n");
        return Ok(None);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let up = wait_for(
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        Duration::from_secs(30),
    );
    if !up {
        return Err("chromedriver did not listen".into());
    }
    Ok(Some(Driver { child, port }))
}

fn chromium() -> String {
    std::env::var("WAYMARK_CHROMIUM").unwrap_or_else(|_| CHROMIUM.into())
}

/// A headless Chromium session (flags that keep it off the closed network).
async fn browser(driver: &Driver, profile: &Path) -> Result<Client> {
    browser_with(driver, profile, &[]).await
}

/// The same with more Chromium flags.
async fn browser_with(driver: &Driver, profile: &Path, flags: &[&str]) -> Result<Client> {
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ]
    .iter()
    .chain(flags)
    .map(|f| f.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": chromium(), "args": args }),
    );
    // fantoccini builds a rustls client (unused on loopback's plain HTTP), which needs a
    // process-wide crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(ClientBuilder::rustls()?
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await?)
}

/// Where screenshots go: `target/web-screenshots/`.
fn screenshots() -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/web-screenshots");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn shoot(client: &Client, name: &str) -> Result {
    let png = client.screenshot().await?;
    std::fs::write(screenshots()?.join(format!("{name}.png")), png)?;
    Ok(())
}

/// The page's JavaScript errors (collected by live.js).
async fn js_errors(client: &Client) -> Result<Vec<String>> {
    let errors = client
        .execute(
            "return window.waymarkErrors || ['live.js did not load'];",
            vec![],
        )
        .await?;
    Ok(serde_json::from_value(errors)?)
}

/// Polls `check` every 100 ms for up to `timeout`.
async fn until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn cell_texts(client: &Client, css: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for element in client.find_all(Locator::Css(css)).await? {
        out.push(element.text().await?);
    }
    Ok(out)
}

#[test]
fn the_web_view_shows_streams_runs_live_failures_and_traces() -> Result {
    let Some(driver) = driver()? else {
        return Ok(());
    };
    let sandbox = Sandbox::start(&["--records", "600", "--customers", "50"])?;
    let dir = TempDir::new("web");
    let window =
        r#"window = { lag = "0s", start_param = "updated_since", end_param = "updated_before" }"#;
    let mut streams = String::new();
    for resource in ["orders", "customers"] {
        streams += &stream_table(
            resource,
            &format!("/{resource}"),
            "updated_at",
            50,
            CURSOR,
            &format!("{window}\nschedule = {{ every = \"{ONCE}\" }}"),
        );
    }
    write_workflow(
        dir.path(),
        "timeout = \"2s\"\nmax_attempts = 2",
        &streams,
        "",
    )?;
    let state = dir.path().join("state");
    let (child, api) = serve_with(&state, &sandbox.url, dir.path(), &["shop.toml"], &[])?;
    assert!(wait_for_lock(&state, child.id()));
    let first_runs = wait_for(
        || runs(&state).is_ok_and(|r| r.len() == 2 && r.iter().all(|r| r["status"] == "completed")),
        Duration::from_secs(60),
    );
    assert!(first_runs, "{:?}", runs(&state)?);
    // A checkpoint change, carried out by serve: the stream's page shows who and why.
    let set = waymark(&state, &sandbox.url)
        .current_dir(dir.path())
        .args(["checkpoint", "set", "shop.toml", "--stream", "customers"])
        .args([
            "--to",
            "2026-01-01T00:00:00Z",
            "--reason",
            "re-read January for the web test",
        ])
        .output()?;
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let profile = dir.path().join("chromium");
    let outcome = tokio::runtime::Runtime::new()?.block_on(async {
        let client = browser(&driver, &profile).await?;
        let checked = drive(&client, &api, &state, &sandbox).await;
        let _ = client.close().await;
        checked?;
        // Dark: the same page in the other colour scheme.
        let dark = dir.path().join("chromium-dark");
        let client =
            browser_with(&driver, &dark, &["--blink-settings=preferredColorScheme=0"]).await?;
        let checked = async {
            client.goto(&format!("{api}/")).await?;
            // The overview reloads itself now and then: read the colour of a page that
            // has its stylesheet, waiting for one (a reload may be under way).
            let mut background = serde_json::Value::Null;
            let began = std::time::Instant::now();
            while began.elapsed() < Duration::from_secs(10) {
                let read = client
                    .execute(
                        "return document.readyState === 'complete' \
                         ? getComputedStyle(document.body).backgroundColor : null;",
                        vec![],
                    )
                    .await;
                background = read.unwrap_or(serde_json::Value::Null);
                if background == "rgb(22, 24, 27)" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(background, "rgb(22, 24, 27)", "dark background");
            shoot(&client, "overview-dark").await?;
            // Keyboard: Tab walks the header's links, then the table's; Enter follows one.
            let body = client.find(Locator::Css("body")).await?;
            let mut reached = String::new();
            for _ in 0..8 {
                body.send_keys("\u{E004}").await?; // Tab
                let href = client
                    .execute(
                        "return document.activeElement.getAttribute('href');",
                        vec![],
                    )
                    .await?;
                reached = href.as_str().unwrap_or_default().to_string();
                if reached.starts_with("/streams/") {
                    break;
                }
            }
            assert!(reached.starts_with("/streams/"), "Tab reached {reached}");
            client.active_element().await?.send_keys("\u{E007}").await?; // Enter
            let at = client.current_url().await?;
            assert_eq!(at.path(), reached, "Enter followed the link");
            Ok::<(), Box<dyn std::error::Error>>(())
        }
        .await;
        let _ = client.close().await;
        checked
    });
    let (code, _, log) = terminate(child, dir.path())?;
    outcome?;
    assert_eq!(code, Some(0), "{log}");
    Ok(())
}

async fn drive(client: &Client, api: &str, state: &Path, sandbox: &Sandbox) -> Result {
    // The overview: each stream with its verdict.
    client.goto(&format!("{api}/")).await?;
    for stream in ["shop/orders", "shop/customers"] {
        let row = client
            .find(Locator::Css(&format!("tr[data-stream='{stream}']")))
            .await?;
        assert_eq!(
            row.attr("data-health").await?.as_deref(),
            Some("ok"),
            "{stream}"
        );
        // Due again an hour after it started: a time, this year.
        let next = row.find(Locator::Css("td.next")).await?.text().await?;
        assert!(next.starts_with("20"), "{stream}: next run {next}");
    }
    shoot(client, "overview").await?;
    assert_eq!(js_errors(client).await?, Vec::<String>::new());

    // A run's timeline is its journal, row for row.
    client
        .find(Locator::Css(
            "tr[data-stream='shop/orders'] td:nth-child(5) a",
        ))
        .await?
        .click()
        .await?;
    let run_id = client
        .current_url()
        .await?
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let steps = journal(state, &run_id)?;
    let seqs = cell_texts(client, "#timeline tbody tr td:first-child").await?;
    let want: Vec<String> = steps.iter().map(|s| s["seq"].to_string()).collect();
    assert_eq!(seqs, want, "the timeline is the journal");
    let kinds = cell_texts(client, "#timeline tbody tr td:nth-child(3)").await?;
    let want: Vec<String> = steps
        .iter()
        .map(|s| s["step"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(kinds, want);
    let outcomes = cell_texts(client, "#timeline tbody tr td:nth-child(6)").await?;
    let want: Vec<String> = steps
        .iter()
        .map(|s| s["outcome"].as_str().unwrap_or_default().trim().to_string())
        .collect();
    assert_eq!(outcomes, want);
    shoot(client, "run").await?;
    assert_eq!(js_errors(client).await?, Vec::<String>::new());

    // Run now, and follow the run live until it completes: each page takes 300 ms.
    sandbox.set_faults(r#"{"latency_ms": 500}"#)?;
    // Changes for the next run to read: a dozen pages of 50, ~6 s — the page is loaded
    // well before the run ends.
    sandbox.apply_mutations(600)?;
    client.goto(&format!("{api}/streams/shop/orders")).await?;
    shoot(client, "stream").await?;
    client
        .find(Locator::Css("form[action$='/run'] button"))
        .await?
        .click()
        .await?;
    // The form's answer is a redirect back to the stream's page, saying what happened.
    let said = client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("p[role=status]"))
        .await?
        .text()
        .await?;
    assert_eq!(said, "started");
    let mut live_run = String::new();
    let going = wait_for(
        || {
            runs(state).is_ok_and(|r| {
                r.iter()
                    .find(|r| r["stream"] == "orders" && r["status"] == "running")
                    .map(|r| live_run = r["run"].as_str().unwrap_or_default().to_string())
                    .is_some()
            })
        },
        Duration::from_secs(30),
    );
    assert!(going, "a run of orders started");
    client.goto(&format!("{api}/runs/{live_run}")).await?;
    // (Read tolerantly: a page that sees the end reloads itself under the driver.)
    let following = until(Duration::from_secs(10), || async {
        match client.find(Locator::Id("live")).await {
            Ok(e) => e.text().await.is_ok_and(|t| t == "following live"),
            Err(_) => false,
        }
    })
    .await;
    assert!(following, "the run page follows the run live");
    let completed = until(Duration::from_secs(60), || async {
        match client.find(Locator::Id("run-status")).await {
            Ok(e) => e.text().await.is_ok_and(|t| t == "completed"),
            Err(_) => false,
        }
    })
    .await;
    if !completed {
        shoot(client, "run-live-failed").await?;
        let seen = client
            .execute(
                "return [document.getElementById('live').textContent, \
                 document.querySelectorAll('#timeline tbody tr').length, \
                 document.getElementById('run-status').textContent, window.waymarkErrors];",
                vec![],
            )
            .await?;
        return Err(format!(
            "the page did not see the run complete: {seen}; runs: {:?}",
            runs(state)?
        )
        .into());
    }
    // After following live and the reload at the end: the whole journal, row for row.
    let seqs = cell_texts(client, "#timeline tbody tr td:first-child").await?;
    let want: Vec<String> = journal(state, &live_run)?
        .iter()
        .map(|s| s["seq"].to_string())
        .collect();
    assert_eq!(seqs, want);
    assert_eq!(js_errors(client).await?, Vec::<String>::new());
    sandbox.set_faults("{}")?;

    // A failing stream comes first, in red.
    sandbox.set_faults(r#"{"rate_500": 1.0}"#)?;
    client
        .goto(&format!("{api}/streams/shop/customers"))
        .await?;
    let why = cell_texts(client, "#checkpoint-changes tbody tr td:nth-child(4)").await?;
    assert!(
        why.iter().any(|w| w == "re-read January for the web test"),
        "{why:?}"
    );
    client
        .find(Locator::Css("form[action$='/run'] button"))
        .await?
        .click()
        .await?;
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("p[role=status]"))
        .await?;
    let failed = wait_for(
        || {
            runs(state).is_ok_and(|r| {
                r.iter()
                    .any(|r| r["stream"] == "customers" && r["status"] == "failed")
            })
        },
        Duration::from_secs(60),
    );
    sandbox.set_faults("{}")?;
    assert!(failed, "{:?}", runs(state)?);
    client.goto(&format!("{api}/")).await?;
    let first = client.find(Locator::Css("#streams tbody tr")).await?;
    assert_eq!(
        first.attr("data-stream").await?.as_deref(),
        Some("shop/customers")
    );
    assert_eq!(first.attr("data-health").await?.as_deref(), Some("failing"));
    let color = client
        .execute(
            "return getComputedStyle(document.querySelector('#streams tbody tr .health')).color;",
            vec![],
        )
        .await?;
    assert_eq!(color, "rgb(197, 34, 31)", "failing is red");
    shoot(client, "overview-failing").await?;

    // Trace a record.
    client.goto(&format!("{api}/trace")).await?;
    let form = client.form(Locator::Css("form[action='/trace']")).await?;
    form.set_by_name("stream", "orders").await?;
    form.set_by_name("key", "5").await?;
    form.submit().await?;
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Id("sightings"))
        .await?;
    let fates = cell_texts(client, "#sightings tbody tr td:last-child").await?;
    assert!(!fates.is_empty(), "order 5 was seen");
    assert_eq!(fates[0], "inserted");
    shoot(client, "trace").await?;

    client.goto(&format!("{api}/dlq")).await?;
    shoot(client, "dead-letters").await?;
    // On a phone: the overview fits the width (tables scroll inside their box).
    client.set_window_size(390, 844).await?;
    client.goto(&format!("{api}/")).await?;
    let overflow = client
        .execute(
            "return document.documentElement.scrollWidth > window.innerWidth;",
            vec![],
        )
        .await?;
    assert_eq!(
        overflow, false,
        "the page does not scroll sideways on a phone"
    );
    shoot(client, "overview-phone").await?;
    assert_eq!(js_errors(client).await?, Vec::<String>::new());
    // The error check sees what a page would log (so its empty answers mean something).
    client.execute("console.error('probe');", vec![]).await?;
    assert_eq!(js_errors(client).await?, ["probe"]);
    Ok(())
}

/// With a token set, the pages need it: a page redirects to the login form, a wrong token
/// is refused, the right one sets a cookie the pages (and the live journal) accept; a form
/// without this process's CSRF token is refused. Plain HTTP, no browser needed.
#[test]
fn with_a_token_the_pages_ask_for_it_once_and_forms_need_their_csrf_token() -> Result {
    let sandbox = Sandbox::start(&["--records", "10"])?;
    let dir = TempDir::new("web-login");
    let streams = stream_table(
        "orders",
        "/orders",
        "updated_at",
        50,
        CURSOR,
        &format!("schedule = {{ every = \"{ONCE}\" }}"),
    );
    write_workflow(dir.path(), "", &streams, "")?;
    let state = dir.path().join("state");
    let token = "s3cret-web-token";
    let (child, api) = serve_with(
        &state,
        &sandbox.url,
        dir.path(),
        &["shop.toml"],
        &[("WAYMARK_API_TOKEN", token)],
    )?;
    // The overview lists the streams with a run.
    let ran = wait_for(
        || runs(&state).is_ok_and(|r| r.iter().any(|r| r["status"] == "completed")),
        Duration::from_secs(30),
    );
    assert!(ran);
    let result = tokio::runtime::Runtime::new()?.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let page = client.get(format!("{api}/")).send().await?;
        assert_eq!(page.status(), 303);
        assert_eq!(page.headers()["location"], "/login");
        let form = client.get(format!("{api}/login")).send().await?;
        assert_eq!(form.status(), 200);
        assert!(form.text().await?.contains("name=\"token\""));
        let wrong = client
            .post(format!("{api}/login"))
            .form(&[("token", "nope")])
            .send()
            .await?;
        assert_eq!(wrong.status(), 401);
        let right = client
            .post(format!("{api}/login"))
            .form(&[("token", token)])
            .send()
            .await?;
        assert_eq!(right.status(), 303);
        let cookie = right.headers()["set-cookie"].to_str()?.to_string();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let cookie = cookie.split(';').next().unwrap_or_default().to_string();
        let overview = client
            .get(format!("{api}/"))
            .header("cookie", &cookie)
            .send()
            .await?;
        assert_eq!(overview.status(), 200);
        assert!(overview.text().await?.contains("shop/orders"));
        // The API takes the cookie as it takes the bearer token.
        let runs = client
            .get(format!("{api}/api/runs"))
            .header("cookie", &cookie)
            .send()
            .await?;
        assert_eq!(runs.status(), 200);
        // A form without the page's CSRF token changes nothing.
        let forged = client
            .post(format!("{api}/streams/shop/orders/run"))
            .header("cookie", &cookie)
            .form(&[("csrf", "guess")])
            .send()
            .await?;
        assert_eq!(forged.status(), 403);
        // With it, the stream runs.
        let stream_page = client
            .get(format!("{api}/streams/shop/orders"))
            .header("cookie", &cookie)
            .send()
            .await?
            .text()
            .await?;
        let csrf = stream_page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .ok_or("no csrf field")?
            .to_string();
        let ran = client
            .post(format!("{api}/streams/shop/orders/run"))
            .header("cookie", &cookie)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await?;
        assert_eq!(ran.status(), 303);
        let to = ran.headers()["location"].to_str()?.to_string();
        assert!(to.starts_with("/streams/shop/orders?said="), "{to}");
        Ok::<(), Box<dyn std::error::Error>>(())
    });
    let (code, _, log) = terminate(child, dir.path())?;
    result.map_err(|e| e.to_string())?;
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains(token), "the token never reaches the log");
    Ok(())
}

/// Dead letters in the browser: a column type that does not fit makes every order a dead
/// letter; the page lists them and shows them; once the file is fixed, Retry writes them and the stream leaves the list; a drop asks for a reason.
#[test]
fn dead_letters_are_shown_retried_after_a_fix_and_disappear() -> Result {
    let Some(driver) = driver()? else {
        return Ok(());
    };
    let sandbox = Sandbox::start(&["--records", "120", "--customers", "30"])?;
    let dir = TempDir::new("web-dlq");
    let broken =
        format!("schedule = {{ every = \"{ONCE}\" }}\ncolumns = {{ status = \"integer\" }}");
    let customers =
        format!("schedule = {{ every = \"{ONCE}\" }}\ncolumns = {{ name = \"integer\" }}");
    let streams = stream_table("orders", "/orders", "updated_at", 50, CURSOR, &broken)
        + &stream_table(
            "customers",
            "/customers",
            "updated_at",
            50,
            CURSOR,
            &customers,
        );
    let file = write_workflow(dir.path(), "", &streams, "")?;
    let state = dir.path().join("state");
    let (child, api) = serve_with(&state, &sandbox.url, dir.path(), &["shop.toml"], &[])?;
    let lettered = wait_for(
        || runs(&state).is_ok_and(|r| r.len() == 2 && r.iter().all(|r| r["status"] == "completed")),
        Duration::from_secs(60),
    );
    assert!(lettered, "{:?}", runs(&state)?);
    let profile = dir.path().join("chromium");
    let outcome = tokio::runtime::Runtime::new()?.block_on(async {
        let client = browser(&driver, &profile).await?;
        let checked = async {
            client.goto(&format!("{api}/dlq")).await?;
            let count = client
                .find(Locator::Css(
                    "tr[data-stream='shop/orders'] td:nth-child(2)",
                ))
                .await?
                .text()
                .await?;
            assert_eq!(count, "120");
            client
                .find(Locator::Css(
                    "tr[data-stream='shop/orders'] td:first-child a",
                ))
                .await?
                .click()
                .await?;
            let shown = cell_texts(&client, "#stream-letters tbody tr td:nth-child(2)").await?;
            assert_eq!(shown.len(), 120);
            assert!(
                shown[0].starts_with("column `status` (`status`)"),
                "{}",
                shown[0]
            );
            shoot(&client, "dead-letter-list").await?;

            // Fixed in the file (the retry reads it, as `waymark dlq retry` does).
            let fixed = std::fs::read_to_string(&file)?
                .replace("status = \"integer\"", "status = \"text\"");
            std::fs::write(&file, fixed)?;
            client.goto(&format!("{api}/dlq")).await?;
            client
                .find(Locator::Css(
                    "tr[data-stream='shop/orders'] form[action$='/retry'] button",
                ))
                .await?
                .click()
                .await?;
            let said = client
                .wait()
                .at_most(Duration::from_secs(60))
                .for_element(Locator::Css("p[role=status]"))
                .await?
                .text()
                .await?;
            assert!(said.contains("retried 120 dead letters"), "{said}");
            assert!(client
                .find(Locator::Css("tr[data-stream='shop/orders']"))
                .await
                .is_err());

            // A drop asks for a reason (the browser will not submit an empty one).
            let form = client
                .form(Locator::Css(
                    "tr[data-stream='shop/customers'] form[action$='/drop']",
                ))
                .await?;
            form.set_by_name("reason", "names are text; known, dropped in the test")
                .await?;
            form.submit().await?;
            client
                .wait()
                .at_most(Duration::from_secs(30))
                .for_element(Locator::Css("p[role=status]"))
                .await?;
            assert!(client.find(Locator::Id("no-letters")).await.is_ok());
            shoot(&client, "dead-letters-after").await?;
            assert_eq!(js_errors(&client).await?, Vec::<String>::new());
            Ok::<(), Box<dyn std::error::Error>>(())
        }
        .await;
        let _ = client.close().await;
        checked
    });
    let (code, _, log) = terminate(child, dir.path())?;
    outcome.map_err(|e| format!("{e}\n{log}"))?;
    assert_eq!(code, Some(0), "{log}");
    let audit = std::fs::read_to_string(state.join("dead_letters/shop/customers/audit.log"))?;
    assert!(audit.contains("names are text"), "{audit}");
    Ok(())
}
