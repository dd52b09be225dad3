//! The deploy files in `deploy/` against the example they deploy.
//!
//! No container engine or cluster runs here, so this test parses the Dockerfile and every
//! Kubernetes manifest and checks that they agree with `examples/stateless_api/` and the
//! README: the port, the probe routes, the environment variables, the drain time against
//! the termination grace period, the Secret, the non-root user and the toolchain. The
//! facts are read from the source files themselves, so changing the example (its port,
//! its drain constant, a route, a variable) without updating `deploy/` fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

const EXAMPLE: &str = "examples/stateless_api";
const MANIFESTS: &str = "deploy/kubernetes";
const DOCKERFILE: &str = "deploy/Dockerfile";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    let full = root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every `.rs` file under `dir`, in name order, one after the other.
fn read_dir(dir: &str) -> String {
    let full = root().join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&full)
        .unwrap_or_else(|e| panic!("{}: {e}", full.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no .rs file", full.display());
    files
        .iter()
        .map(|path| {
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- what the example and the README say --------------------------------------------

/// The example's source and README, and the facts the deploy files must agree with.
struct Example {
    source: String,
    readme: String,
}

impl Example {
    fn load() -> Self {
        Self {
            source: read_dir(EXAMPLE),
            readme: read("README.md"),
        }
    }

    /// The number in `<prefix><number>` in the example's source, e.g. the seconds in
    /// `const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);`.
    fn number_after(&self, prefix: &str) -> u64 {
        let start = self.source.find(prefix).unwrap_or_else(|| {
            panic!("{EXAMPLE} no longer contains `{prefix}`: update deploy/ and this test")
        }) + prefix.len();
        let digits: String = self.source[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .parse()
            .unwrap_or_else(|e| panic!("{EXAMPLE}: no number after `{prefix}`: {e}"))
    }

    /// How long the example lets in-flight requests finish after SIGTERM, in seconds.
    fn drain_secs(&self) -> u64 {
        self.number_after("const SHUTDOWN_GRACE: Duration = Duration::from_secs(")
    }

    /// The port the example listens on when `PORT` is unset.
    fn default_port(&self) -> u64 {
        self.number_after("var(\"PORT\").map_or(Ok(")
    }

    /// The routes the example serves, e.g. `/health`.
    fn routes(&self) -> BTreeSet<String> {
        self.source
            .split(".route(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect()
    }

    /// Whether the example reads the environment variable `name`: a `"NAME"` literal in
    /// its source, or `RUST_LOG`, which tracing-subscriber's `EnvFilter` reads.
    fn reads(&self, name: &str) -> bool {
        self.source.contains(&format!("\"{name}\""))
            || (name == "RUST_LOG" && self.source.contains("EnvFilter::try_from_default_env"))
    }

    /// The variables of the README's table of the example's environment, with the text of
    /// their row.
    fn readme_variables(&self) -> BTreeMap<String, String> {
        let table = self
            .readme
            .split("| variable | default | what |")
            .nth(1)
            .expect("README: the example's table of variables");
        table
            .lines()
            .skip(2) // the separator row
            .take_while(|line| line.starts_with('|'))
            .filter_map(|line| {
                let name = line.split('`').nth(1)?;
                Some((name.to_owned(), line.to_owned()))
            })
            .collect()
    }
}

// ---- the Dockerfile -----------------------------------------------------------------

/// One Dockerfile instruction: keyword (upper case) and its arguments, continuation lines
/// joined.
struct Instruction {
    keyword: String,
    args: String,
}

/// The instructions of each stage, in order (a stage starts at a `FROM`).
fn dockerfile_stages() -> Vec<Vec<Instruction>> {
    let text = read(DOCKERFILE);
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue; // a comment inside a continued instruction
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        };
        if instruction.keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the Dockerfile starts with FROM")
            .push(instruction);
    }
    stages
}

fn instruction<'a>(stage: &'a [Instruction], keyword: &str) -> Option<&'a str> {
    stage
        .iter()
        .rev()
        .find(|i| i.keyword == keyword)
        .map(|i| i.args.as_str())
}

/// The image of a stage's `FROM` (without `AS name`).
fn base_image(stage: &[Instruction]) -> &str {
    let from = instruction(stage, "FROM").expect("FROM");
    from.split_whitespace()
        .find(|word| !word.starts_with("--"))
        .expect("FROM <image>")
}

fn parse_version(version: &str) -> (u64, u64) {
    let mut parts = version.split('.').map(|p| p.parse::<u64>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor),
        _ => panic!("not a Rust version: {version:?}"),
    }
}

/// The `rust-version` of Cargo.toml.
fn rust_version() -> (u64, u64) {
    let manifest = read("Cargo.toml");
    let line = manifest
        .lines()
        .find(|l| l.starts_with("rust-version"))
        .expect("Cargo.toml: rust-version");
    parse_version(line.split('"').nth(1).expect("rust-version = \"x.y\""))
}

/// The crate's default features, from Cargo.toml's `default = [...]`.
fn default_features() -> Vec<String> {
    let manifest = read("Cargo.toml");
    let line = manifest
        .lines()
        .find(|l| l.starts_with("default = ["))
        .expect("Cargo.toml: default features");
    quoted_list(line)
}

/// The strings of a TOML line's list (`key = ["a", "b"]`).
fn quoted_list(line: &str) -> Vec<String> {
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The `required-features` of the example in Cargo.toml.
fn example_required_features() -> Vec<String> {
    let manifest = read("Cargo.toml");
    let section = manifest
        .split("[[example]]")
        .find(|s| s.contains("name = \"stateless_api\""))
        .expect("Cargo.toml: [[example]] stateless_api");
    let line = section
        .lines()
        .find(|l| l.starts_with("required-features"))
        .expect("stateless_api: required-features");
    quoted_list(line)
}

// ---- the Kubernetes manifests -------------------------------------------------------

/// Every document of every `.yaml` file in deploy/kubernetes, with its file name.
fn manifests() -> Vec<(String, Yaml)> {
    let dir = root().join(MANIFESTS);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut docs = Vec::new();
    for path in files {
        let name = file_name(&path);
        let text = std::fs::read_to_string(&path).expect("manifest");
        let parsed =
            YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
        assert!(!parsed.is_empty(), "{name}: empty");
        docs.extend(parsed.into_iter().map(|doc| (name.clone(), doc)));
    }
    docs
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

/// The one manifest of `kind`.
fn one(kind: &str) -> Yaml {
    let mut found: Vec<Yaml> = manifests()
        .into_iter()
        .map(|(_, doc)| doc)
        .filter(|doc| doc["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} in {MANIFESTS}");
    found.remove(0)
}

fn str_at<'a>(doc: &'a Yaml, what: &str) -> &'a str {
    doc.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {doc:?}"))
}

fn int_at(doc: &Yaml, what: &str) -> i64 {
    doc.as_i64()
        .unwrap_or_else(|| panic!("{what}: expected an integer, got {doc:?}"))
}

/// A label map as (key, value) pairs.
fn labels(map: &Yaml, what: &str) -> BTreeMap<String, String> {
    map.as_hash()
        .unwrap_or_else(|| panic!("{what}: expected a map, got {map:?}"))
        .iter()
        .map(|(k, v)| (str_at(k, what).to_owned(), str_at(v, what).to_owned()))
        .collect()
}

/// The labels of the Deployment's pods.
fn pod_labels(deployment: &Yaml) -> BTreeMap<String, String> {
    labels(
        &deployment["spec"]["template"]["metadata"]["labels"],
        "pod labels",
    )
}

fn assert_selects(selector: &Yaml, pods: &BTreeMap<String, String>, what: &str) {
    let selector = labels(selector, what);
    assert!(!selector.is_empty(), "{what}: empty selector");
    for (key, value) in &selector {
        assert_eq!(
            pods.get(key),
            Some(value),
            "{what} selects {key}={value}, which the Deployment's pods do not carry"
        );
    }
}

/// The Deployment's one container.
fn container(deployment: &Yaml) -> Yaml {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_vec()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    containers[0].clone()
}

/// The port number a probe or Service names: a number, or a container port's name.
fn resolve_port(port: &Yaml, container: &Yaml) -> i64 {
    if let Some(number) = port.as_i64() {
        return number;
    }
    let name = str_at(port, "port");
    container["ports"]
        .as_vec()
        .expect("container ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .map(|p| int_at(&p["containerPort"], "containerPort"))
        .unwrap_or_else(|| panic!("no container port named {name:?}"))
}

fn env(container: &Yaml) -> Vec<Yaml> {
    container["env"].as_vec().expect("env").clone()
}

fn env_var<'a>(env: &'a [Yaml], name: &str) -> &'a Yaml {
    env.iter()
        .find(|e| e["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("the container sets no {name}"))
}

// ---- the tests ----------------------------------------------------------------------

#[test]
fn every_manifest_parses_and_names_its_kind_and_app() {
    let docs = manifests();
    let app = {
        let deployment = one("Deployment");
        pod_labels(&deployment)["app.kubernetes.io/name"].clone()
    };
    let mut kinds = BTreeSet::new();
    for (file, doc) in &docs {
        let kind = str_at(&doc["kind"], file);
        assert!(doc["apiVersion"].as_str().is_some(), "{file}: apiVersion");
        kinds.insert(kind.to_owned());
        if kind == "Kustomization" {
            continue;
        }
        assert!(doc["metadata"]["name"].as_str().is_some(), "{file}: name");
        assert_eq!(
            doc["metadata"]["labels"]["app.kubernetes.io/name"].as_str(),
            Some(app.as_str()),
            "{file}: labelled with the app"
        );
    }
    for kind in [
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {MANIFESTS}");
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let kustomization = one("Kustomization");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_vec()
        .expect("resources")
        .iter()
        .map(|r| str_at(r, "resource").to_owned())
        .collect();
    let files: BTreeSet<String> = manifests()
        .into_iter()
        .filter(|(_, doc)| doc["kind"].as_str() != Some("Kustomization"))
        .map(|(file, _)| file)
        .collect();
    assert_eq!(listed, files);
}

#[test]
fn deployment_runs_three_replicas_and_rolls_without_losing_one() {
    let deployment = one("Deployment");
    assert_eq!(int_at(&deployment["spec"]["replicas"], "replicas"), 3);
    let strategy = &deployment["spec"]["strategy"];
    assert_eq!(strategy["type"].as_str(), Some("RollingUpdate"));
    let max_unavailable = &strategy["rollingUpdate"]["maxUnavailable"];
    assert!(
        max_unavailable.as_i64() == Some(0) || max_unavailable.as_str() == Some("0%"),
        "maxUnavailable must be 0, got {max_unavailable:?}"
    );
    assert_selects(
        &deployment["spec"]["selector"]["matchLabels"],
        &pod_labels(&deployment),
        "the Deployment's selector",
    );
}

#[test]
fn probes_use_the_example_health_and_ready_routes() {
    let example = Example::load();
    let routes = example.routes();
    let deployment = one("Deployment");
    let container = container(&deployment);
    for (probe, path) in [("livenessProbe", "/health"), ("readinessProbe", "/ready")] {
        assert!(
            routes.contains(path),
            "{EXAMPLE} serves no {path} (routes: {routes:?})"
        );
        assert!(
            example.readme.contains(&format!("`GET {path}`")),
            "README: no `GET {path}` row"
        );
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(
            resolve_port(&get["port"], &container) as u64,
            example.default_port(),
            "{probe} port"
        );
    }
}

#[test]
fn ports_agree_between_example_readme_dockerfile_deployment_and_service() {
    let example = Example::load();
    let port = example.default_port();
    let readme_row = &example.readme_variables()["PORT"];
    assert!(
        readme_row.contains(&format!("`{port}`")),
        "README says another default port: {readme_row}"
    );

    let deployment = one("Deployment");
    let container = container(&deployment);
    let container_port = container["ports"][0]["containerPort"].as_i64();
    assert_eq!(container_port, Some(port as i64), "containerPort");
    let env = env(&container);
    assert_eq!(
        env_var(&env, "PORT")["value"].as_str(),
        Some(port.to_string().as_str()),
        "PORT in the Deployment"
    );

    let service = one("Service");
    let service_ports = service["spec"]["ports"].as_vec().expect("service ports");
    assert!(!service_ports.is_empty());
    for p in service_ports {
        assert_eq!(
            resolve_port(&p["targetPort"], &container) as u64,
            port,
            "Service targetPort"
        );
    }
    assert_selects(
        &service["spec"]["selector"],
        &pod_labels(&deployment),
        "the Service",
    );

    let stages = dockerfile_stages();
    let runtime = stages.last().expect("a stage");
    assert_eq!(
        instruction(runtime, "EXPOSE"),
        Some(port.to_string().as_str()),
        "EXPOSE"
    );
    let env_line = instruction(runtime, "ENV").expect("ENV in the runtime stage");
    assert!(
        env_line.contains(&format!("PORT={port}")),
        "the image sets PORT={port}: {env_line}"
    );
}

#[test]
fn grace_period_outlasts_the_example_drain_and_the_pre_stop_pause() {
    let example = Example::load();
    let drain = example.drain_secs();
    assert!(
        example.readme.contains(&format!("(at most {drain} s)")),
        "README states another drain time than {EXAMPLE} ({drain} s)"
    );
    let deployment = one("Deployment");
    let grace = int_at(
        &deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    ) as u64;
    let container = container(&deployment);
    let pre_stop = match container["lifecycle"]["preStop"]["exec"]["command"].as_vec() {
        Some(command) => {
            assert_eq!(command[0].as_str(), Some("sleep"), "preStop: a sleep");
            str_at(&command[1], "preStop sleep")
                .parse::<u64>()
                .expect("preStop sleep seconds")
        }
        None => 0,
    };
    assert!(
        grace > drain + pre_stop,
        "terminationGracePeriodSeconds {grace} must exceed the drain ({drain} s) plus preStop \
         ({pre_stop} s), or Kubernetes SIGKILLs requests still in flight"
    );
}

#[test]
fn jwt_secret_and_redis_url_come_from_the_documented_secret() {
    let example = Example::load();
    let deployment = one("Deployment");
    let env = env(&container(&deployment));
    let mut secret_names = BTreeSet::new();
    for name in ["JWT_SECRET", "REDIS_URL"] {
        assert!(
            example.source.contains(&format!("var(\"{name}\")")),
            "{EXAMPLE} does not read {name}"
        );
        let var = env_var(&env, name);
        assert!(var["value"].is_badvalue(), "{name} must not be a literal");
        let secret = &var["valueFrom"]["secretKeyRef"];
        assert_eq!(secret["key"].as_str(), Some(name), "{name}: secret key");
        secret_names.insert(str_at(&secret["name"], "secret name").to_owned());
    }
    assert_eq!(secret_names.len(), 1, "one Secret: {secret_names:?}");
    let secret = secret_names.pop_first().expect("a secret name");
    let command = format!("kubectl create secret generic {secret}");
    assert!(example.readme.contains(&command), "README: no `{command}`");
    for name in ["JWT_SECRET", "REDIS_URL"] {
        assert!(
            example.readme.contains(&format!("--from-literal={name}=")),
            "README: the secret command sets no {name}"
        );
    }
}

#[test]
fn every_variable_the_deployment_sets_is_one_the_example_reads() {
    let example = Example::load();
    let documented = example.readme_variables();
    assert!(
        documented.contains_key("JWT_SECRET"),
        "README variables table"
    );
    for name in documented.keys() {
        assert!(
            example.reads(name),
            "README documents {name}, which {EXAMPLE} does not read"
        );
    }
    let deployment = one("Deployment");
    for var in env(&container(&deployment)) {
        let name = str_at(&var["name"], "env name");
        assert!(
            documented.contains_key(name),
            "the Deployment sets {name}, which the example does not document or read"
        );
    }
}

#[test]
fn deployment_requests_and_limits_cpu_and_memory() {
    let deployment = one("Deployment");
    let resources = &container(&deployment)["resources"];
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            let value = &resources[bound][resource];
            assert!(
                value.as_str().is_some() || value.as_i64().is_some(),
                "resources.{bound}.{resource} is missing"
            );
        }
    }
}

#[test]
fn autoscaler_and_disruption_budget_keep_three_pods_of_the_deployment() {
    let deployment = one("Deployment");
    let name = str_at(&deployment["metadata"]["name"], "Deployment name");
    let replicas = int_at(&deployment["spec"]["replicas"], "replicas");

    let hpa = one("HorizontalPodAutoscaler");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"].as_str(), Some("Deployment"));
    assert_eq!(target["name"].as_str(), Some(name));
    let min = int_at(&hpa["spec"]["minReplicas"], "minReplicas");
    let max = int_at(&hpa["spec"]["maxReplicas"], "maxReplicas");
    assert!(min >= 3, "minReplicas {min} < 3");
    assert_eq!(
        min, replicas,
        "the HPA's minimum is the Deployment's replicas"
    );
    assert!(max >= min, "maxReplicas {max} < minReplicas {min}");

    let pdb = one("PodDisruptionBudget");
    assert_selects(
        &pdb["spec"]["selector"]["matchLabels"],
        &pod_labels(&deployment),
        "the PodDisruptionBudget",
    );
    // A drain must be able to make progress, and never take more than one pod at once.
    match (
        pdb["spec"]["maxUnavailable"].as_i64(),
        pdb["spec"]["minAvailable"].as_i64(),
    ) {
        (Some(max_unavailable), None) => assert_eq!(max_unavailable, 1),
        (None, Some(min_available)) => assert_eq!(min_available, replicas - 1),
        other => {
            panic!("PodDisruptionBudget: one integer maxUnavailable or minAvailable, got {other:?}")
        }
    }
}

#[test]
fn dockerfile_builds_the_example_with_its_features_and_a_new_enough_toolchain() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "a multi-stage build");
    let builder = &stages[0];

    let image = base_image(builder);
    let tag = image
        .strip_prefix("rust:")
        .unwrap_or_else(|| panic!("the builder is an official rust image, got {image}"));
    let (version, variant) = tag.split_once('-').unwrap_or((tag, ""));
    assert!(
        parse_version(version) >= rust_version(),
        "builder Rust {version} is older than rust-version {:?}",
        rust_version()
    );

    // The runtime runs the builder's binary: same Debian release, so the same glibc.
    let runtime = stages.last().expect("runtime stage");
    let runtime_image = base_image(runtime);
    let release = variant.rsplit('-').next().unwrap_or_default();
    assert_eq!(
        runtime_image,
        format!("debian:{release}-slim"),
        "the runtime is the slim Debian of the builder ({variant})"
    );

    let build = builder
        .iter()
        .filter(|i| i.keyword == "RUN")
        .map(|i| i.args.as_str())
        .find(|args| args.contains("cargo build"))
        .expect("RUN cargo build");
    for flag in ["--release", "--locked", "--example stateless_api"] {
        assert!(build.contains(flag), "cargo build without {flag}: {build}");
    }
    let features: BTreeSet<&str> = build
        .split("--features")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("cargo build --features")
        .split(',')
        .collect();
    // A default feature is on unless the build turns the defaults off.
    let defaults = if build.contains("--no-default-features") {
        Vec::new()
    } else {
        default_features()
    };
    for feature in example_required_features() {
        assert!(
            features.contains(feature.as_str()) || defaults.contains(&feature),
            "feature {feature}"
        );
    }
    // REDIS_CLUSTER_URLS works only when built with redis-cluster (README).
    let cluster_row = &Example::load().readme_variables()["REDIS_CLUSTER_URLS"];
    assert!(cluster_row.contains("redis-cluster"), "{cluster_row}");
    assert!(features.contains("redis-cluster"), "feature redis-cluster");

    let entrypoint = instruction(runtime, "ENTRYPOINT").expect("ENTRYPOINT");
    assert!(entrypoint.contains("stateless_api"), "{entrypoint}");
}

#[test]
fn image_runs_as_the_same_non_root_user_as_the_pod() {
    let stages = dockerfile_stages();
    let runtime = stages.last().expect("runtime stage");
    let user = instruction(runtime, "USER").expect("USER in the runtime stage");
    let uid: i64 = user
        .split(':')
        .next()
        .and_then(|uid| uid.parse().ok())
        .unwrap_or_else(|| panic!("USER is a numeric uid (runAsNonRoot needs one), got {user}"));
    assert_ne!(uid, 0, "USER is root");

    let deployment = one("Deployment");
    let pod = &deployment["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(pod["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(pod["runAsUser"].as_i64(), Some(uid), "runAsUser and USER");
    let container = container(&deployment);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
}

#[test]
fn readme_builds_the_image_the_deployment_runs() {
    let readme = read("README.md");
    let deployment = one("Deployment");
    let image = str_at(&container(&deployment)["image"], "image").to_owned();
    let build = format!("docker build -f {DOCKERFILE} -t {image} .");
    assert!(readme.contains(&build), "README: no `{build}`");
    assert!(
        readme.contains(&format!("kubectl apply -k {MANIFESTS}")),
        "README: no kubectl apply"
    );
}
