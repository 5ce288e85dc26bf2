//! The deployment kit in deploy/: the systemd unit, the Dockerfile and the Kubernetes manifests
//! name the same ports, probes and paths as the configuration they ship, and each passes the
//! checks this machine can run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// The `[Service]` (or other section) settings of a unit file, in order, repeated keys kept.
fn unit_settings(text: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            current = line.trim_matches(['[', ']']).to_string();
            continue;
        }
        if current == section
            && let Some((k, v)) = line.split_once('=')
        {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[test]
fn the_systemd_unit_is_hardened_and_reloads_with_sighup() {
    let unit = read("apiward.service");
    let service = unit_settings(&unit, "Service");
    let get = |k: &str| -> Vec<&str> {
        service
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("DynamicUser"), ["yes"]);
    assert_eq!(get("ProtectSystem"), ["strict"]);
    assert_eq!(get("NoNewPrivileges"), ["yes"]);
    assert_eq!(get("AmbientCapabilities"), ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(get("CapabilityBoundingSet"), ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(
        get("ExecReload"),
        ["/usr/local/bin/apiward check", "/bin/kill -HUP $MAINPID"],
        "reload checks the file, then sends SIGHUP"
    );
    assert_eq!(
        get("Environment"),
        ["APIWARD_CONFIG=/etc/apiward/apiward.toml"]
    );
    assert_eq!(
        get("RestartPreventExitStatus"),
        ["2"],
        "a bad file is not retried"
    );
    assert!(get("ExecStart")[0].starts_with("/usr/local/bin/apiward run"));
}

/// `systemd-analyze verify` on the unit, with ExecStart pointing at the binary just built (the
/// installed path does not exist here). `.ci/run` installs systemd when it is missing; a machine
/// without it fails this test saying what to install, rather than passing without checking.
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let version = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze is not installed: apt-get install systemd (.ci/run does)");
    assert!(version.status.success());
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_apiward");
    let unit = read("apiward.service").replace("/usr/local/bin/apiward", bin);
    let path = dir.path().join("apiward.service");
    std::fs::write(&path, unit).unwrap();
    // Documentation=man:apiward(1): the page `apiward man` prints, installed where man looks.
    let man1 = dir.path().join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    let page = Command::new(bin).arg("man").output().unwrap();
    assert!(page.status.success());
    std::fs::write(man1.join("apiward.1"), page.stdout).unwrap();
    let mut verify = Command::new("systemd-analyze");
    verify
        .arg("verify")
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .env("MANPATH", dir.path().join("man"));
    if Command::new("man").arg("--version").output().is_err() {
        eprintln!("man is not installed: Documentation= is not checked (--man=no)");
        verify.arg("--man=no");
    }
    let out = verify.arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only lines about this unit count; a container's own missing units are not this file's.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("apiward.service"))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{stderr}");
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_as_non_root_with_a_healthcheck() {
    let text = read("Dockerfile");
    let instructions: Vec<(String, String)> = text
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(i, rest)| (i.to_ascii_uppercase(), rest.trim().to_string()))
        })
        .collect();
    let froms: Vec<&String> = instructions
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(froms.len(), 2, "a build stage and a run stage: {froms:?}");
    assert!(froms[0].ends_with("AS build"));
    assert!(froms[1].contains("distroless") || froms[1].contains("slim"));
    // Everything after the last FROM is the image that runs.
    let last_from = instructions.iter().rposition(|(i, _)| i == "FROM").unwrap();
    let run_stage = &instructions[last_from..];
    let one = |name: &str| -> &str {
        let found: Vec<&str> = run_stage
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        found[0]
    };
    let user = one("USER");
    assert!(
        !user.starts_with("0") && !user.starts_with("root"),
        "{user}"
    );
    assert!(
        run_stage
            .iter()
            .any(|(i, v)| i == "COPY" && v.starts_with("--from=build"))
    );
    let healthcheck = one("HEALTHCHECK");
    assert!(
        healthcheck.contains("CMD [\"/usr/local/bin/apiward\", \"health\"]"),
        "{healthcheck}"
    );
    // The shipped file's ports are the ones exposed, and it is the file the image reads.
    let config = read("apiward.toml");
    let snapshot = apiward::config::compile(&deploy("apiward.toml"), &config)
        .unwrap_or_else(|e| panic!("deploy/apiward.toml: {e}"));
    let admin = snapshot
        .server
        .admin_listen
        .expect("an admin listener for the healthcheck");
    let exposed: Vec<u16> = one("EXPOSE")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(exposed, [snapshot.server.listen.port(), admin.port()]);
    assert!(one("ENV").contains("APIWARD_CONFIG=/etc/apiward/apiward.toml"));
    assert!(
        run_stage
            .iter()
            .any(|(i, v)| i == "COPY" && v == "deploy/apiward.toml /etc/apiward/apiward.toml")
    );
}

/// Every document of every manifest, by kind.
fn manifests() -> BTreeMap<String, Value> {
    let kustomization: Value =
        serde_yaml::from_str(&read("kubernetes/kustomization.yaml")).unwrap();
    let mut by_kind = BTreeMap::new();
    for file in kustomization["resources"].as_sequence().unwrap() {
        let file = file.as_str().unwrap();
        let text = read(&format!("kubernetes/{file}"));
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            let kind = doc["kind"].as_str().unwrap().to_string();
            assert!(by_kind.insert(kind.clone(), doc).is_none(), "two {kind}s");
        }
    }
    by_kind
}

use serde::Deserialize as _;

#[test]
fn the_kubernetes_manifests_name_the_same_ports_probes_and_config_directory() {
    let m = manifests();
    for kind in ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"] {
        assert!(m.contains_key(kind), "no {kind}");
    }
    let deployment = &m["Deployment"];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&m["Service"]["spec"]["selector"], labels);
    assert_eq!(
        &m["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        labels
    );

    // The configuration: the ConfigMap's file compiles, and holds digests only.
    let configmap = &m["ConfigMap"];
    let toml = configmap["data"]["apiward.toml"].as_str().unwrap();
    let snapshot = apiward::config::compile(Path::new("configmap.yaml"), toml)
        .unwrap_or_else(|e| panic!("the ConfigMap's apiward.toml: {e}"));
    assert!(
        !toml.contains("aw_")
            || !toml.lines().any(|l| {
                let l = l.trim_start();
                !l.starts_with('#') && l.contains("aw_") && l.len() > 46
            }),
        "no key in the ConfigMap"
    );
    let listen = snapshot.server.listen.port();
    let admin = snapshot
        .server
        .admin_listen
        .expect("an admin listener")
        .port();

    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let port = |name: &str| -> u64 {
        container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(port("http"), u64::from(listen));
    assert_eq!(port("admin"), u64::from(admin));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    let service_ports = m["Service"]["spec"]["ports"].as_sequence().unwrap();
    assert_eq!(service_ports.len(), 1, "the admin port is not published");
    assert_eq!(service_ports[0]["targetPort"], "http");

    // Mounted as a directory, so the kubelet's `..data` swap is seen and reloaded.
    let mount = &container["volumeMounts"][0];
    assert_eq!(mount["mountPath"], "/etc/apiward");
    assert!(
        mount.get("subPath").is_none(),
        "a subPath mount never sees updates"
    );
    let volume = &deployment["spec"]["template"]["spec"]["volumes"][0];
    assert_eq!(volume["name"], mount["name"]);
    assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"]);
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_at = args.iter().position(|a| *a == "--config").unwrap();
    assert_eq!(args[config_at + 1], "/etc/apiward/apiward.toml");

    // Resources: a memory request and a limit above it; no CPU limit.
    let resources = &container["resources"];
    let mebibytes =
        |v: &Value| -> u64 { v.as_str().unwrap().trim_end_matches("Mi").parse().unwrap() };
    assert!(
        mebibytes(&resources["requests"]["memory"]) < mebibytes(&resources["limits"]["memory"])
    );
    assert!(resources["limits"].get("cpu").is_none());
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    assert_eq!(m["PodDisruptionBudget"]["spec"]["minAvailable"], 1);
}

#[test]
fn the_logrotate_snippet_signals_the_gateway_to_reopen() {
    let text = read("logrotate");
    assert!(text.contains("/var/log/apiward/access.log {"));
    assert!(text.contains("systemctl kill --signal=USR1 --kill-whom=main apiward.service"));
    assert!(
        !text.lines().any(|l| l.trim() == "copytruncate"),
        "the file is renamed and reopened, never copied and truncated (lines would be lost)"
    );
    // The unit lets the gateway write there.
    assert!(
        unit_settings(&read("apiward.service"), "Service")
            .contains(&("LogsDirectory".to_string(), "apiward".to_string()))
    );
}
