//! Every command example in README.md and docs/ that is marked runnable is run, in the order a
//! reader meets them (README.md, then docs/ by name), as one shell session against a copy of the
//! shipped config/apiward.toml, with `apiward` the binary just built. An example that does not
//! run as shown fails this test.
//!
//! The marks are fence info strings:
//! - ```` ```sh runnable ````: a script; every command must succeed (`set -euo pipefail`).
//! - ```` ```console runnable ````: `$ command` lines, each followed by the output it prints
//!   (stdout and stderr together). `…` in an expected line stands for any text, and a line that
//!   is only `…` for any number of lines. A command whose output shows an `error:` line must
//!   fail; any other must succeed.
//! - `gateway` after `runnable`: the example talks to a running gateway. One is started on the
//!   copy, with an admin listener, for the examples that need it, and stopped after them; it
//!   listens on ephemeral ports, which replace `127.0.0.1:8080` and `127.0.0.1:9901` in the
//!   example's text.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[derive(Debug)]
enum Body {
    Script(String),
    /// (command, expected output lines)
    Console(Vec<(String, Vec<String>)>),
}

#[derive(Debug)]
struct Example {
    file: String,
    line: usize,
    gateway: bool,
    body: Body,
}

/// The runnable examples of one Markdown file, in order.
fn examples_in(path: &Path) -> Vec<Example> {
    let text = std::fs::read_to_string(path).unwrap();
    let file = path
        .strip_prefix(ROOT)
        .unwrap_or(path)
        .display()
        .to_string();
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let words: Vec<&str> = info.split_whitespace().collect();
        let mut block = Vec::new();
        for (_, l) in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            block.push(l.to_string());
        }
        if !words.contains(&"runnable") {
            continue;
        }
        let body = match words.first() {
            Some(&"sh") => Body::Script(block.join("\n")),
            Some(&"console") => Body::Console(console(&block)),
            other => panic!(
                "{file}:{}: a runnable block is sh or console, not {other:?}",
                i + 1
            ),
        };
        out.push(Example {
            file: file.clone(),
            line: i + 1,
            gateway: words.contains(&"gateway"),
            body,
        });
    }
    out
}

fn console(block: &[String]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut continued = false;
    for line in block {
        if continued {
            let (command, _) = out.last_mut().expect("a command");
            command.push('\n');
            command.push_str(line);
            continued = line.ends_with('\\');
        } else if let Some(command) = line.strip_prefix("$ ") {
            out.push((command.to_string(), Vec::new()));
            continued = command.ends_with('\\');
        } else {
            let (_, expected) = out.last_mut().expect("output after a `$ ` command");
            expected.push(line.clone());
        }
    }
    out
}

/// Whether `actual` is what `expected` shows, `…` standing for any text.
fn line_matches(expected: &str, actual: &str) -> bool {
    let parts: Vec<&str> = expected.split('…').collect();
    if parts.len() == 1 {
        return expected == actual;
    }
    let mut rest = actual;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(at) = rest.find(part) else {
                return false;
            };
            rest = &rest[at + part.len()..];
        }
    }
    true
}

fn lines_match(expected: &[String], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first == "…" => {
            (0..=actual.len()).any(|skip| lines_match(rest, &actual[skip..]))
        }
        Some((first, rest)) => actual
            .split_first()
            .is_some_and(|(a, more)| line_matches(first, a) && lines_match(rest, more)),
    }
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[test]
fn every_runnable_example_in_the_docs_runs_as_shown_on_the_shipped_config() {
    let mut files = vec![PathBuf::from(ROOT).join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(PathBuf::from(ROOT).join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let examples: Vec<Example> = files.iter().flat_map(|f| examples_in(f)).collect();
    for needed in [
        "README.md",
        "docs/cli.md",
        "docs/explain.md",
        "docs/configuration.md",
    ] {
        assert!(
            examples.iter().any(|e| e.file == needed),
            "{needed} has no runnable example"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let out = dir.path().join("out");
    std::fs::create_dir_all(work.join("config")).unwrap();
    std::fs::create_dir_all(dir.path().join("bin")).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(
        PathBuf::from(ROOT).join("config/apiward.toml"),
        work.join("config/apiward.toml"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_apiward"),
        dir.path().join("bin/apiward"),
    )
    .unwrap();

    // One session: the examples share the file and the shell's variables, as in one terminal.
    let mut script = String::from("set -euo pipefail\n");
    script.push_str(
        "trap 'echo \"@@ failed: $EXAMPLE (exit $?)\" >&2' ERR\n\
         start_gateway() {\n\
           sed -e 's/^listen = \"127.0.0.1:8080\"/listen = \"127.0.0.1:0\"\\nadmin_listen = \"127.0.0.1:0\"/' config/apiward.toml > \"$OUT/gateway.toml\"\n\
           apiward run --config \"$OUT/gateway.toml\" 2> \"$OUT/gateway.log\" > /dev/null &\n\
           GATEWAY_PID=$!\n\
           for _ in $(seq 200); do\n\
             ADDR=$(sed -n 's/.*apiward is serving listen=\\([^ ]*\\).*/\\1/p' \"$OUT/gateway.log\")\n\
             ADMIN=$(sed -n 's/.*apiward is serving .* admin=\\([^ ]*\\).*/\\1/p' \"$OUT/gateway.log\")\n\
             [ -n \"$ADDR\" ] && return 0\n\
             sleep 0.05\n\
           done\n\
           echo 'the gateway did not start' >&2; cat \"$OUT/gateway.log\" >&2; return 1\n\
         }\n\
         stop_gateway() { kill \"$GATEWAY_PID\"; wait \"$GATEWAY_PID\" || true; }\n",
    );
    let mut gateway_running = false;
    for (n, e) in examples.iter().enumerate() {
        let _ = writeln!(
            script,
            "EXAMPLE={}",
            shell_quote(&format!("{}:{}", e.file, e.line))
        );
        if e.gateway && !gateway_running {
            script.push_str("start_gateway\n");
            gateway_running = true;
        } else if !e.gateway && gateway_running {
            script.push_str("stop_gateway\n");
            gateway_running = false;
        }
        // A gateway example is sourced with the addresses put in where the docs show 8080 and
        // 9901, whatever quotes they stand in.
        let at_gateway = |text: &str, name: &str| {
            if e.gateway {
                format!(
                    "cat > \"$OUT/{name}.src\" <<'__APIWARD_EXAMPLE__'\n{text}\n__APIWARD_EXAMPLE__\n\
                     source <(sed -e \"s/127\\.0\\.0\\.1:8080/$ADDR/g\" -e \"s/127\\.0\\.0\\.1:9901/$ADMIN/g\" \"$OUT/{name}.src\")"
                )
            } else {
                text.to_string()
            }
        };
        match &e.body {
            Body::Script(code) => {
                script.push_str(&at_gateway(code, &n.to_string()));
                script.push('\n');
            }
            Body::Console(commands) => {
                for (k, (command, _)) in commands.iter().enumerate() {
                    let _ = writeln!(
                        script,
                        "{{\n{}\n}} > \"$OUT/{n}.{k}.out\" 2>&1 && rc=0 || rc=$?\necho \"$rc\" > \"$OUT/{n}.{k}.rc\"",
                        at_gateway(command, &format!("{n}.{k}"))
                    );
                }
            }
        }
    }
    if gateway_running {
        script.push_str("stop_gateway\n");
    }
    let path = format!(
        "{}:{}",
        dir.path().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&work)
        .env("PATH", path)
        .env("OUT", &out)
        .env_remove("APIWARD_CONFIG")
        .env_remove("APIWARD_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    assert!(
        run.status.success(),
        "the examples did not run:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );

    let mut failures = Vec::new();
    for (n, e) in examples.iter().enumerate() {
        let Body::Console(commands) = &e.body else {
            continue;
        };
        for (k, (command, expected)) in commands.iter().enumerate() {
            let actual = std::fs::read_to_string(out.join(format!("{n}.{k}.out"))).unwrap();
            let rc: i32 = std::fs::read_to_string(out.join(format!("{n}.{k}.rc")))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let actual_lines: Vec<&str> = actual.lines().collect();
            let shows_error = expected.iter().any(|l| l.starts_with("error: "));
            if !lines_match(expected, &actual_lines) || (rc != 0) != shows_error {
                failures.push(format!(
                    "{}:{}: $ {command}\n(exit {rc}) it printed:\n{actual}\nthe docs show:\n{}\n",
                    e.file,
                    e.line,
                    expected.join("\n")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_wildcard_matches_any_text_and_a_lone_one_any_lines() {
    assert!(line_matches(
        "issued key aw_…… for x",
        "issued key aw_abcde… for x"
    ));
    assert!(line_matches("a…c", "abbbc"));
    assert!(!line_matches("a…c", "abbbd"));
    let exp = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(lines_match(&exp(&["a", "…", "d"]), &["a", "b", "c", "d"]));
    assert!(lines_match(&exp(&["a", "…"]), &["a"]));
    assert!(!lines_match(&exp(&["a", "d"]), &["a", "b", "d"]));
}
