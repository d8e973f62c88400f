//! The Helm chart (`deploy/helm`), rendered and linted by the real Helm engine
//! (helm-python-sdk in the venv, see `tests/it/helm/render.py`), every core object
//! validated against the Kubernetes OpenAPI schemas, and three netsy processes run with
//! exactly the environment, arguments, config and certificate attributes it renders.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common;
use crate::common::{etcd_bin_dir, etcdctl, wait_until};
use netsy::tls::dev::{Ca, LeafSpec};
use serde_json::{json, Value};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm");
const RENDER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/helm/render.py");

fn helm(cmd: &str, values: &Value) -> Value {
    let out = Command::new(etcd_bin_dir().join("python"))
        .args([RENDER, cmd, CHART, &values.to_string()])
        .output()
        .expect("run tests/it/helm/render.py with the venv's python (make test installs it)");
    assert!(out.status.success(), "render.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("render.py prints JSON")
}

/// The chart rendered with `values` (release `netsy` in namespace `default`).
pub(crate) struct Rendered {
    pub(crate) objects: Vec<Value>,
    notes: String,
    unvalidated: Vec<String>,
}

pub(crate) fn render(values: Value) -> Rendered {
    let out = helm("render", &values);
    if let Some(e) = out.get("error") {
        panic!("rendering {values} failed: {e}");
    }
    Rendered {
        objects: out["objects"].as_array().expect("objects").clone(),
        notes: out["notes"].as_str().unwrap_or_default().to_string(),
        unvalidated: serde_json::from_value(out["unvalidated"].clone()).expect("unvalidated"),
    }
}

fn render_error(values: Value) -> String {
    let out = helm("render", &values);
    out.get("error")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{values} must be refused"))
        .to_string()
}

impl Rendered {
    pub(crate) fn kinds(&self) -> Vec<String> {
        let mut k: Vec<String> = self
            .objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or("")
                )
            })
            .collect();
        k.sort();
        k
    }

    pub(crate) fn get(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", self.kinds()))
    }

    fn statefulset(&self) -> &Value {
        self.get("StatefulSet", "netsy")
    }

    fn container(&self) -> &Value {
        &self.statefulset()["spec"]["template"]["spec"]["containers"][0]
    }

    /// The container's literal env values (`valueFrom` entries map to "").
    fn env(&self) -> BTreeMap<String, String> {
        self.container()["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().expect("name").to_string(),
                    e["value"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    fn volume(&self, name: &str) -> &Value {
        self.statefulset()["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    }

    fn csi(&self, volume: &str, attribute: &str) -> String {
        let v = self.volume(volume);
        assert_eq!(v["csi"]["driver"], "csi.cert-manager.io");
        v["csi"]["volumeAttributes"][format!("csi.cert-manager.io/{attribute}")]
            .as_str()
            .unwrap_or_else(|| panic!("{volume} has no {attribute}"))
            .to_string()
    }
}

#[test]
fn the_chart_lints_clean_under_strict_helm_lint() {
    for values in [
        json!({}),
        json!({"persistence": {"enabled": true}, "mesh": {"enabled": true, "genesis": "{}", "naPrivateKey": "k"}, "metrics": {"serviceMonitor": {"enabled": true}},
            "monitoring": {"dashboards": {"enabled": true}, "rules": {"enabled": true}}}),
    ] {
        let report = helm("lint", &values);
        assert_eq!(report["errors"], json!([]), "{report}");
        let problems: Vec<&Value> = report["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter(|m| m["severity"].as_i64().unwrap_or(0) >= 2)
            .collect();
        assert!(problems.is_empty(), "{values}: {problems:?}");
    }
}

#[test]
fn default_install_renders_valid_objects_with_the_documented_shape() {
    let r = render(json!({"clusterID": "prod-eu-1"}));
    assert_eq!(
        r.kinds(),
        [
            "Certificate/netsy-ca",
            "Certificate/netsy-client-kube-apiserver",
            "ConfigMap/netsy",
            "Issuer/netsy-ca",
            "Issuer/netsy-selfsigned",
            "PodDisruptionBudget/netsy",
            "Service/netsy",
            "Service/netsy-client",
            "ServiceAccount/netsy",
            "StatefulSet/netsy",
        ]
    );
    // Every object but cert-manager's was checked against the Kubernetes schemas.
    assert_eq!(r.unvalidated, ["cert-manager.io/v1 Certificate", "cert-manager.io/v1 Issuer"]);

    let sts = &r.statefulset()["spec"];
    assert_eq!(sts["replicas"], 3);
    assert_eq!(sts["podManagementPolicy"], "Parallel");
    assert_eq!(sts["serviceName"], "netsy");
    let pod = &sts["template"]["spec"];
    assert!(pod["terminationGracePeriodSeconds"].as_i64().expect("grace") >= 30);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(r.container()["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert!(sts["template"]["metadata"]["annotations"]["checksum/config"].is_string());
    assert!(r.container()["resources"]["requests"]["memory"].is_string());

    // Ports and probes.
    let ports: Vec<(String, i64)> = r.container()["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| (p["name"].as_str().expect("n").to_string(), p["containerPort"].as_i64().expect("p")))
        .collect();
    assert_eq!(ports, [("client".into(), 2378), ("peer".into(), 2381), ("health".into(), 8080)]);
    assert_eq!(r.container()["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(r.container()["readinessProbe"]["httpGet"]["path"], "/readyz");
    let startup = &r.container()["startupProbe"];
    assert_eq!(startup["httpGet"]["path"], "/livez");
    assert!(startup["periodSeconds"].as_i64().expect("period") * startup["failureThreshold"].as_i64().expect("threshold") >= 300);

    // Environment: identity, binds, advertise addresses, certificates, emptyDir data.
    let env = r.env();
    assert_eq!(env["NETSY_NODE_ID"], "$(POD_NAME)");
    assert_eq!(env["NETSY_BIND_CLIENT"], "0.0.0.0:2378");
    assert_eq!(env["NETSY_BIND_PEER"], "0.0.0.0:2381");
    assert_eq!(
        env["NETSY_ADVERTISE_CLIENT"],
        "https://$(POD_NAME).netsy.default.svc.cluster.local:2378"
    );
    assert_eq!(
        env["NETSY_ADVERTISE_PEER"],
        "https://$(POD_NAME).netsy.default.svc.cluster.local:2381"
    );
    assert_eq!(env["NETSY_DATA_EPHEMERAL"], "true");
    assert_eq!(env["NETSY_TLS_CLIENT_CERT"], "/etc/netsy/certs/peer/peer.crt");
    assert!(r.volume("data")["emptyDir"].is_object());
    assert!(!env.contains_key("GENESIS_FILE"));

    // cert-manager CSI: the member's identity and its names.
    assert_eq!(r.csi("server-tls", "uri-sans"), "netsy://prod-eu-1/peer/${POD_NAME}");
    assert_eq!(r.csi("peer-tls", "uri-sans"), "netsy://prod-eu-1/peer/${POD_NAME}");
    assert!(r
        .csi("server-tls", "dns-names")
        .split(',')
        .any(|d| d == "${POD_NAME}.netsy.${POD_NAMESPACE}.svc.cluster.local"));
    assert_eq!(r.csi("server-tls", "ip-sans"), "127.0.0.1,::1");
    assert!(r.csi("server-tls", "key-usages").contains("server auth"));
    assert!(r.csi("peer-tls", "key-usages").contains("client auth"));
    assert_eq!(r.csi("server-tls", "issuer-name"), "netsy-ca");
    assert_eq!(r.csi("server-tls", "duration"), "2160h");
    assert_eq!(r.csi("server-tls", "renew-before"), "720h");

    // The CA chain and kube-apiserver's client certificate.
    assert_eq!(r.get("Certificate", "netsy-ca")["spec"]["isCA"], true);
    assert_eq!(r.get("Certificate", "netsy-ca")["spec"]["commonName"], "prod-eu-1-ca");
    assert_eq!(r.get("Certificate", "netsy-ca")["spec"]["duration"], "87600h");
    let kube = &r.get("Certificate", "netsy-client-kube-apiserver")["spec"];
    assert_eq!(kube["uris"], json!(["netsy://prod-eu-1/client/kube-apiserver"]));
    assert!(kube["usages"].as_array().expect("usages").contains(&json!("client auth")));

    // Services: headless (publishing unready pods) and the client Service.
    let headless = &r.get("Service", "netsy")["spec"];
    assert_eq!(headless["clusterIP"], "None");
    assert_eq!(headless["publishNotReadyAddresses"], true);
    assert_eq!(r.get("Service", "netsy-client")["spec"]["ports"][0]["port"], 2378);
    assert_eq!(r.get("PodDisruptionBudget", "netsy")["spec"]["maxUnavailable"], 1);

    // The config carries the cluster id; NOTES prints --etcd-servers and the TLS flags.
    let config = r.get("ConfigMap", "netsy")["data"]["config.jsonc"]
        .as_str()
        .expect("config")
        .to_string();
    assert!(config.contains(r#""cluster_id": "prod-eu-1""#), "{config}");
    assert!(r.notes.contains(
        "--etcd-servers=https://netsy-0.netsy.default.svc.cluster.local:2378,https://netsy-1.netsy.default.svc.cluster.local:2378,https://netsy-2.netsy.default.svc.cluster.local:2378\n"
    ), "{}", r.notes);
    for flag in ["--etcd-cafile=", "--etcd-certfile=", "--etcd-keyfile="] {
        assert!(r.notes.contains(flag), "{}", r.notes);
    }
}

#[test]
fn values_override_what_they_name() {
    let r = render(json!({
        "replicas": 5,
        "image": {"repository": "registry.example/netsy", "tag": "v9"},
        "persistence": {"enabled": true, "size": "20Gi", "storageClass": "gp3"},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/netsy"}},
        "extraEnv": [{"name": "NETSY_DEBUG", "value": "1"}],
        "podLabels": {"team": "platform"},
        "podAnnotations": {"example.com/a": "b"},
        "nodeSelector": {"pool": "control-plane"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "etcd", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        "tls": {"caDuration": "43800h", "duration": "720h", "renewBefore": "240h"},
        "clientCertificates": ["kube-apiserver", "backup"],
        "mesh": {"enabled": true, "genesis": "{\"g\":1}", "naPrivateKey": "key", "naKeyId": "na-prod",
                 "operatorPublicKeys": {"op": "AAAA"}, "operatorKeyTiers": {"op": "privileged"}},
        "metrics": {"serviceMonitor": {"enabled": true}},
        "kms": {"enabled": true, "hostPath": "/run/kms", "mountPath": "/var/run/kmsplugin"},
    }));
    let sts = r.statefulset();
    assert_eq!(sts["spec"]["replicas"], 5);
    assert_eq!(r.container()["image"], "registry.example/netsy:v9");
    let claim = &sts["spec"]["volumeClaimTemplates"][0]["spec"];
    assert_eq!(claim["storageClassName"], "gp3");
    assert_eq!(claim["resources"]["requests"]["storage"], "20Gi");
    assert!(sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .all(|v| v["name"] != "data"));
    let env = r.env();
    assert_eq!(env["NETSY_DATA_EPHEMERAL"], "false");
    assert_eq!(env["NETSY_DEBUG"], "1");
    assert_eq!(
        r.get("ServiceAccount", "netsy")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::1:role/netsy"
    );
    let pod = &sts["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["team"], "platform");
    assert_eq!(pod["metadata"]["annotations"]["example.com/a"], "b");
    assert_eq!(pod["spec"]["nodeSelector"]["pool"], "control-plane");
    assert_eq!(pod["spec"]["tolerations"][0]["value"], "etcd");
    assert!(
        pod["spec"]["affinity"]["podAntiAffinity"].is_null(),
        "affinity replaces the default"
    );
    assert!(pod["spec"]["affinity"]["nodeAffinity"].is_object());
    assert_eq!(r.csi("server-tls", "duration"), "720h");
    assert_eq!(r.get("Certificate", "netsy-ca")["spec"]["duration"], "43800h");
    assert_eq!(
        r.get("Certificate", "netsy-client-backup")["spec"]["uris"],
        json!(["netsy://netsy/client/backup"])
    );
    assert_eq!(r.notes.matches(".netsy.default.svc.cluster.local:2378").count(), 5);

    // The mesh authority: port, Service, secret files and the Genesis Mesh variables.
    assert_eq!(r.get("Service", "netsy-mesh")["spec"]["ports"][0]["port"], 8443);
    assert!(r.container()["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .any(|p| p["containerPort"] == 8443));
    assert_eq!(env["GENESIS_FILE"], "/etc/netsy/mesh/genesis.signed.json");
    assert_eq!(env["NA_PRIVATE_KEY_FILE"], "/etc/netsy/mesh/na.key");
    assert_eq!(env["NA_KEY_ID"], "na-prod");
    assert_eq!(env["NETSY_BIND_MESH"], "0.0.0.0:8443");
    let keys: Value = serde_json::from_str(&env["OPERATOR_PUBLIC_KEYS_JSON"]).expect("json");
    assert_eq!(keys, json!({"op": "AAAA"}));
    let tiers: Value = serde_json::from_str(&env["OPERATOR_KEY_TIERS_JSON"]).expect("json");
    assert_eq!(tiers, json!({"op": "privileged"}));
    assert_eq!(r.get("Secret", "netsy-mesh")["stringData"]["na.key"], "key");
    assert!(r.unvalidated.contains(&"monitoring.coreos.com/v1 ServiceMonitor".to_string()));
    assert_eq!(r.get("ServiceMonitor", "netsy")["spec"]["endpoints"][0]["path"], "/metrics");

    // The KMS plugin's socket directory: a hostPath volume, mounted where the config's
    // storage.encryption.kms.endpoint points; or the volume given.
    assert_eq!(r.volume("kms-socket")["hostPath"]["path"], "/run/kms");
    assert!(r.container()["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .any(|m| m["name"] == "kms-socket" && m["mountPath"] == "/var/run/kmsplugin"));
    let shared = render(json!({"kms": {"enabled": true, "volume": {"emptyDir": {}}}}));
    assert!(shared.volume("kms-socket")["emptyDir"].is_object());
    assert!(shared.volume("kms-socket")["hostPath"].is_null());
    assert!(render(json!({})).statefulset()["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .all(|v| v["name"] != "kms-socket"));

    // A config change rolls the pods (the checksum annotation follows the config).
    let a = render(json!({}));
    let b = render(json!({"config": "{ \"cluster_id\": \"netsy\", \"storage\": { \"provider\": \"gcs\", \"bucket_name\": \"b\" } }"}));
    let checksum = |r: &Rendered| r.statefulset()["spec"]["template"]["metadata"]["annotations"]["checksum/config"].clone();
    assert_ne!(checksum(&a), checksum(&b));
}

#[test]
fn the_values_schema_rejects_bad_values() {
    for (values, expect) in [
        (json!({"clusterID": "Bad_ID"}), "/clusterID"),
        (json!({"clusterID": "-lead"}), "/clusterID"),
        (json!({"clusterID": "double--hyphen"}), "/clusterID"),
        (json!({"clusterID": "a".repeat(33)}), "/clusterID"),
        (json!({"replicas": 2}), "/replicas"),
        (
            json!({"tls": {"caDuration": "ten years", "duration": "1h", "renewBefore": "1m"}}),
            "/tls/caDuration",
        ),
        (
            json!({"mesh": {"enabled": true, "operatorKeyTiers": {"op": "admin"}}}),
            "/mesh/operatorKeyTiers/op",
        ),
        (json!({"mesh": {"enabled": true}}), "mesh.genesis is required"),
        (json!({"monitoring": {"rules": {"enabled": "yes"}}}), "/monitoring/rules/enabled"),
        (json!({"monitoring": {"dashboards": {"lable": "x"}}}), "/monitoring/dashboards"),
        (json!({"kms": {"enabled": true, "mountPath": "run/kms"}}), "/kms/mountPath"),
    ] {
        let err = render_error(values.clone());
        assert!(err.contains(expect), "{values}: {err}");
    }
}

/// Runs the rendered pod spec as local processes.
struct Pods(Vec<Child>);

impl Drop for Pods {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Expands Kubernetes `$(VAR)` references from `vars`.
fn expand_k8s(value: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = value.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// Expands the CSI driver's `${POD_NAME}` / `${POD_NAMESPACE}`.
fn expand_csi(value: &str, pod: &str) -> String {
    value.replace("${POD_NAME}", pod).replace("${POD_NAMESPACE}", "default")
}

/// Issues what cert-manager's CSI driver would mount for `volume` of `pod`, into `dir`,
/// with the pod's DNS name replaced by its loopback address `ip`.
fn issue_csi(r: &Rendered, ca: &Ca, volume: &str, pod: &str, pod_dns: &str, ip: Ipv4Addr, dir: &Path) {
    let attr = |a: &str| expand_csi(&r.csi(volume, a), pod);
    let attr_or = |a: &str| {
        r.volume(volume)["csi"]["volumeAttributes"][format!("csi.cert-manager.io/{a}")]
            .as_str()
            .map(|v| expand_csi(v, pod))
            .unwrap_or_default()
    };
    let split = |s: String| -> Vec<String> { s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(String::from).collect() };
    let mut dns = Vec::new();
    let mut ips: Vec<IpAddr> = split(attr_or("ip-sans")).iter().map(|i| i.parse().expect("ip")).collect();
    for d in split(attr_or("dns-names")) {
        if d == pod_dns {
            ips.push(IpAddr::V4(ip));
        } else {
            dns.push(d);
        }
    }
    let usages = attr("key-usages");
    let now = time::OffsetDateTime::now_utc();
    let leaf = ca
        .issue(&LeafSpec {
            common_name: attr("common-name"),
            uri: Some(attr("uri-sans")),
            dns,
            ips,
            server_auth: usages.contains("server auth"),
            client_auth: usages.contains("client auth"),
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(1),
        })
        .expect("issue");
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join(attr("certificate-file")), leaf.cert_pem).expect("crt");
    std::fs::write(dir.join(attr("privatekey-file")), leaf.key_pem).expect("key");
    std::fs::write(dir.join(attr("ca-file")), ca.cert_pem()).expect("ca");
}

#[test]
fn three_processes_run_with_the_rendered_pod_spec() {
    let moto = common::moto::Moto::start();
    moto.create_bucket("netsy-chart");
    // What a user would set: the bucket (here moto's) and credentials through extraEnv.
    let config = format!(
        r#"{{
  "cluster_id": "{{{{ .Values.clusterID }}}}",
  "storage": {},
  "tls": {{ "min_version": "1.2" }},
}}"#,
        moto.storage_json("netsy-chart", "chart")
    );
    let extra_env: Vec<Value> = common::moto::ENV.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
    // The mesh authority too, from a network `netsy mesh init` made.
    let tmp = tempfile::tempdir().expect("tempdir");
    let net = tmp.path().join("net");
    netsy::mesh::tools::init("chart", &net, "http://127.0.0.1:8443").expect("mesh init");
    let read = |f: &str| std::fs::read_to_string(net.join(f)).expect("mesh file");
    let operator = netsy::mesh::keys::read_public(&net.join("keys/operator.pub")).expect("operator key");
    let mesh = json!({
        "enabled": true,
        "genesis": read("genesis.signed.json"),
        "naPrivateKey": read("keys/na.key"),
        "naKeyId": "na-local",
        "operatorPublicKeys": {"operator-local": netsy::mesh::keys::b64(operator.as_bytes())},
        "operatorKeyTiers": {"operator-local": "privileged"},
    });
    let r = render(json!({"clusterID": "chart-test", "config": config, "extraEnv": extra_env, "mesh": mesh}));
    let ca = Ca::new("chart-test-ca").expect("ca");
    let container = r.container();
    let mounts: BTreeMap<String, String> = container["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().expect("n").to_string(),
                m["mountPath"].as_str().expect("p").to_string(),
            )
        })
        .collect();
    let ip = |i: usize| Ipv4Addr::new(127, 0, 0, 30 + i as u8);
    let pod_dns = |i: usize| format!("netsy-{i}.netsy.default.svc.cluster.local");

    let mut pods = Pods(Vec::new());
    for i in 0..3 {
        let pod = format!("netsy-{i}");
        let root = tmp.path().join(&pod);
        // Each mount of the pod spec becomes a directory of this "pod".
        let local = |path: &str| -> String {
            let (name, mount) = mounts
                .iter()
                .filter(|(_, m)| path.starts_with(m.as_str()))
                .max_by_key(|(_, m)| m.len())
                .unwrap_or_else(|| panic!("{path} is on no volume: the read-only root filesystem would refuse it"));
            root.join(name)
                .join(path[mount.len()..].trim_start_matches('/'))
                .display()
                .to_string()
        };
        let config_path = PathBuf::from(local("/etc/netsy/config/config.jsonc"));
        std::fs::create_dir_all(config_path.parent().expect("dir")).expect("mkdir");
        std::fs::write(
            &config_path,
            r.get("ConfigMap", "netsy")["data"]["config.jsonc"].as_str().expect("config"),
        )
        .expect("config");
        issue_csi(
            &r,
            &ca,
            "server-tls",
            &pod,
            &pod_dns(i),
            ip(i),
            Path::new(&local(&mounts["server-tls"])),
        );
        issue_csi(
            &r,
            &ca,
            "peer-tls",
            &pod,
            &pod_dns(i),
            ip(i),
            Path::new(&local(&mounts["peer-tls"])),
        );
        // The mesh Secret's files, as the kubelet mounts them.
        let secret_dir = PathBuf::from(local(&mounts["mesh"]));
        std::fs::create_dir_all(&secret_dir).expect("mkdir");
        let secret = r.volume("mesh")["secret"]["secretName"].as_str().expect("secret name").to_string();
        for (file, content) in r.get("Secret", &secret)["stringData"].as_object().expect("stringData") {
            std::fs::write(secret_dir.join(file), content.as_str().expect("text")).expect("secret file");
        }

        // The env as the kubelet resolves it, then loopback for the pod's addresses.
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        let mut env: Vec<(String, String)> = Vec::new();
        for e in container["env"].as_array().expect("env") {
            let name = e["name"].as_str().expect("name").to_string();
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod.clone(),
                Some("metadata.namespace") => "default".to_string(),
                Some(other) => panic!("unexpected fieldRef {other}"),
                None => expand_k8s(e["value"].as_str().expect("value"), &vars),
            };
            let value = value
                .replace(&pod_dns(i), &ip(i).to_string())
                .replace("0.0.0.0", &ip(i).to_string());
            let value = if value.starts_with("/etc/netsy") || value.starts_with("/var/lib/netsy") {
                local(&value)
            } else {
                value
            };
            vars.insert(name.clone(), value.clone());
            env.push((name, value));
        }
        let args: Vec<String> = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| {
                let a = a.as_str().expect("arg");
                if a.starts_with("/etc/netsy") {
                    local(a)
                } else {
                    a.to_string()
                }
            })
            .collect();
        let log = std::fs::File::create(root.join("netsy.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_netsy"))
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn netsy");
        pods.0.push(child);
    }
    let logs = || -> String {
        (0..3)
            .map(|i| {
                format!(
                    "--- netsy-{i} ---\n{}",
                    std::fs::read_to_string(tmp.path().join(format!("netsy-{i}/netsy.log"))).unwrap_or_default()
                )
            })
            .collect()
    };
    // Readiness as the kubelet probes it: /readyz on the health port.
    let probe = &container["readinessProbe"]["httpGet"];
    let port = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == probe["port"])
        .and_then(|p| p["containerPort"].as_u64())
        .expect("probe port");
    for i in 0..3 {
        let ready = || {
            let request = format!("GET {} HTTP/1.0\r\n\r\n", probe["path"].as_str().expect("path"));
            std::net::TcpStream::connect((ip(i), port as u16))
                .map_err(|e| e.to_string())
                .and_then(|s| common::http_exchange(s, request.as_bytes()))
                .is_ok_and(|(status, _)| status == 200)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while !ready() {
            assert!(std::time::Instant::now() < deadline, "netsy-{i} never became ready\n{}", logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // kube-apiserver's client certificate, as the chart's Certificate describes it.
    let kube = &r.get("Certificate", "netsy-client-kube-apiserver")["spec"];
    let now = time::OffsetDateTime::now_utc();
    let leaf = ca
        .issue(&LeafSpec {
            common_name: kube["commonName"].as_str().expect("cn").to_string(),
            uri: Some(kube["uris"][0].as_str().expect("uri").to_string()),
            dns: vec![],
            ips: vec![],
            server_auth: false,
            client_auth: kube["usages"].as_array().expect("usages").contains(&json!("client auth")),
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(1),
        })
        .expect("client cert");
    let dir = tmp.path().join("kube-apiserver");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("tls.crt"), leaf.cert_pem).expect("crt");
    std::fs::write(dir.join("tls.key"), leaf.key_pem).expect("key");
    std::fs::write(dir.join("ca.crt"), ca.cert_pem()).expect("ca");
    let flags = [
        format!("--cacert={}", dir.join("ca.crt").display()),
        format!("--cert={}", dir.join("tls.crt").display()),
        format!("--key={}", dir.join("tls.key").display()),
    ];
    let ctl = |i: usize, args: &[&str]| {
        let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        etcdctl(&format!("https://{}:2378", ip(i)), &all)
    };
    wait_until(Duration::from_secs(60), "three voters in the member list", || {
        let (ok, out, _) = ctl(0, &["member", "list"]);
        ok && out.lines().filter(|l| l.ends_with("false")).count() == 3
    });
    let (ok, out, err) = ctl(0, &["member", "list"]);
    assert!(ok, "{err}");
    for i in 0..3 {
        assert!(
            out.contains(&format!("netsy-{i}, https://{}:2381, https://{}:2378", ip(i), ip(i))),
            "{out}"
        );
    }
    // Every pod serves the mesh authority on the chart's mesh port.
    let mesh_port = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "mesh")
        .and_then(|p| p["containerPort"].as_u64())
        .expect("mesh port");
    for i in 0..3 {
        let (status, body) =
            netsy::mesh::tools::request(&format!("http://{}:{mesh_port}", ip(i)), "GET", "/readyz", &[], None).expect("readyz");
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("ready")),
            "netsy-{i}: {body}\n{}",
            logs()
        );
    }
    let (ok, _, err) = ctl(1, &["put", "/registry/pods/default/p", "v"]);
    assert!(ok, "{err}\n{}", logs());
    for i in 0..3 {
        let (ok, out, err) = ctl(i, &["get", "/registry/pods/default/p", "--print-value-only"]);
        assert!(ok && out.trim() == "v", "netsy-{i}: {out} {err}");
    }
}

/// GKE Workload Identity as docs/deployment.md sets it up: the Google service account's
/// annotation lands on the ServiceAccount the pods run as (the metadata server hands
/// that account's tokens to those pods), and a `gcs` storage config is mounted as
/// written and valid. The token exchange itself is tested in object_store_gcs.rs.
#[test]
fn workload_identity_annotates_the_pods_service_account() {
    let gsa = "netsy@my-project.iam.gserviceaccount.com";
    let config =
        r#"{ "cluster_id": "{{ .Values.clusterID }}", "storage": { "provider": "gcs", "bucket_name": "netsy-{{ .Values.clusterID }}" } }"#;
    let r = render(json!({
        "clusterID": "prod",
        "config": config,
        "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": gsa}},
    }));
    let sa = r.get("ServiceAccount", "netsy");
    assert_eq!(sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"], gsa);
    assert_eq!(r.statefulset()["spec"]["template"]["spec"]["serviceAccountName"], "netsy");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.jsonc");
    std::fs::write(&path, r.get("ConfigMap", "netsy")["data"]["config.jsonc"].as_str().expect("config")).expect("config");
    let file = netsy::config::Config::load_cluster(&path).expect("a valid cluster file");
    assert_eq!(
        (
            file.storage.provider.as_str(),
            file.storage.bucket_name.as_str(),
            file.storage.endpoint
        ),
        ("gcs", "netsy-prod", None)
    );
}
