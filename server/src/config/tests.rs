use super::*;
use serde_json::json;

fn llm(model_id: &str, extra: Value) -> Value {
    let mut c = json!({"model_loading_config": {"model_id": model_id, "model_source": "default"}});
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        c.extend(extra);
    }
    c
}

fn app(name: &str, prefix: &str, llm_configs: Vec<Value>) -> Value {
    json!({
        "name": name,
        "route_prefix": prefix,
        "import_path": "llm_serve:build_openai_app",
        "args": {"llm_configs": llm_configs},
    })
}

fn check_yaml(text: &str) -> Result<Checked, ConfigError> {
    check(parse_text(text)?, None)
}

fn deployment<'a>(c: &'a Checked, app: usize, name: &str) -> &'a DeploymentConfig {
    &c.apps[app]
        .deployments
        .iter()
        .find(|d| d.name() == name)
        .unwrap()
        .config
}

#[test]
fn a_ray_serve_llm_config_builds_router_and_server_deployments() {
    let c = check_yaml(
        r#"
applications:
- name: llm_app
  route_prefix: /
  import_path: ray.serve.llm:build_openai_app
  args:
    llm_configs:
    - model_loading_config:
        model_id: Qwen/Qwen2.5-0.5B.Instruct
        model_source: default
      engine_kwargs:
        max_model_len: 2048
      deployment_config:
        autoscaling_config:
          min_replicas: 1
          max_replicas: 2
"#,
    )
    .unwrap();
    assert_eq!(c.config.http_options.port, 8000);
    assert_eq!(c.config.http_options.host, "0.0.0.0");
    assert_eq!(c.config.proxy_location.as_str(), "EveryNode");
    let names: Vec<&str> = c.apps[0].deployments.iter().map(|d| d.name()).collect();
    assert_eq!(
        names,
        ["LLMRouter", "LLMServer:Qwen--Qwen2_5-0_5B_Instruct"]
    );
    let server = deployment(&c, 0, "LLMServer:Qwen--Qwen2_5-0_5B_Instruct");
    assert_eq!(server.num_replicas, None);
    let a = server.autoscaling_config.as_ref().unwrap();
    assert_eq!(
        (a.min_replicas, a.max_replicas, a.target_ongoing_requests),
        (1, 2, 2.0)
    );
    assert_eq!(server.health_check_timeout_s, 10.0);
    assert_eq!(server.graceful_shutdown_timeout_s, 20.0);
    assert_eq!(server.ray_actor_options.num_cpus, 1.0);
    let spec = c.apps[0].deployments[1].model().unwrap();
    assert_eq!(spec.model_id, "Qwen/Qwen2.5-0.5B.Instruct");
    assert_eq!(spec.model_source, "default");
}

#[test]
fn precedence_is_config_over_builder_over_defaults() {
    let code = llm(
        "m",
        json!({"deployment_config": {
            "num_replicas": 2, "graceful_shutdown_timeout_s": 6,
            "ray_actor_options": {"num_cpus": 2, "num_gpus": 0.5},
            "user_config": {"a": 1, "b": 2}
        }}),
    );
    let mut a = app("x", "/", vec![code]);
    a["deployments"] = json!([{
        "name": "LLMServer:m", "num_replicas": 5,
        "ray_actor_options": {"num_gpus": 1}, "user_config": {"a": 3}
    }]);
    let c = check(json!({"applications": [a]}), None).unwrap();
    let d = deployment(&c, 0, "LLMServer:m");
    assert_eq!(d.num_replicas, Some(5));
    assert_eq!(d.graceful_shutdown_timeout_s, 6.0);
    assert_eq!(d.health_check_period_s, 10.0);
    // Replaced whole: num_cpus falls back to the default, not the code's 2.
    assert_eq!(d.ray_actor_options.num_cpus, 1.0);
    assert_eq!(d.ray_actor_options.num_gpus, 1.0);
    assert_eq!(d.user_config, Some(json!({"a": 3})));
}

#[test]
fn num_replicas_and_autoscaling_replace_each_other_across_layers() {
    let code = llm(
        "m",
        json!({"deployment_config": {"autoscaling_config": {"max_replicas": 4}}}),
    );
    let mut a = app("x", "/", vec![code]);
    a["deployments"] = json!([{"name": "LLMServer:m", "num_replicas": 3}]);
    let c = check(json!({"applications": [a]}), None).unwrap();
    let d = deployment(&c, 0, "LLMServer:m");
    assert_eq!(
        (d.num_replicas, d.autoscaling_config.is_none()),
        (Some(3), true)
    );

    let auto = llm("m", json!({"deployment_config": {"num_replicas": "auto"}}));
    let c = check(json!({"applications": [app("x", "/", vec![auto])]}), None).unwrap();
    let d = deployment(&c, 0, "LLMServer:m");
    let a = d.autoscaling_config.as_ref().unwrap();
    assert_eq!(
        (a.min_replicas, a.max_replicas, a.target_ongoing_requests),
        (1, 100, 2.0)
    );
    assert_eq!(d.initial_replicas(), 1);
}

#[test]
fn errors_name_the_field_path_and_the_expectation() {
    let bad = llm("m", json!({"deployment_config": {"num_replicas": 0}}));
    let a = app("x", "/", vec![llm("ok", json!({})), bad]);
    let e = check(json!({"applications": [a]}), None).unwrap_err();
    assert_eq!(
        e.path,
        "applications[0].args.llm_configs[1].deployment_config.num_replicas"
    );
    assert!(
        e.message
            .contains("expected a positive integer or \"auto\""),
        "{e}"
    );

    let typo = llm("m", json!({"deployment_config": {"num_replica": 2}}));
    let e = check(json!({"applications": [app("x", "/", vec![typo])]}), None).unwrap_err();
    assert!(e.to_string().contains("num_replica"), "{e}");
    assert!(
        e.path
            .starts_with("applications[0].args.llm_configs[0].deployment_config"),
        "{e}"
    );

    let e = check_yaml(
        "applications:\n- name: a\n  import_path: llm_serve:build_openai_app\n  rout_prefix: /a\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("rout_prefix"), "{e}");

    let kwargs = llm("m", json!({"engine_kwargs": {"max_num_seq": 4}}));
    let e = check(json!({"applications": [app("x", "/", vec![kwargs])]}), None).unwrap_err();
    assert_eq!(e.path, "applications[0].args.llm_configs[0].engine_kwargs");
    assert!(e.message.contains("max_num_seq"), "{e}");

    let e = check(json!({"http_options": {"port": "eighty"}}), None).unwrap_err();
    assert_eq!(e.path, "http_options.port");

    let e = check(
        json!({"applications": [{"name": "a", "import_path": "my_module:app"}]}),
        None,
    )
    .unwrap_err();
    assert_eq!(e.path, "applications[0].import_path");
}

#[test]
fn duplicates_and_unknown_deployments_are_rejected() {
    let two = |n1: &str, p1: &str, n2: &str, p2: &str| json!({"applications": [app(n1, p1, vec![llm("m", json!({}))]), app(n2, p2, vec![llm("m", json!({}))])]});
    assert!(check(two("a", "/a", "b", "/b"), None).is_ok());
    let e = check(two("a", "/a", "a", "/b"), None).unwrap_err();
    assert_eq!(e.path, "applications[1].name");
    let e = check(two("a", "/a", "b", "/a"), None).unwrap_err();
    assert_eq!(e.path, "applications[1].route_prefix");
    let e = check(
        json!({"applications": [app("a", "/", vec![llm("m", json!({})), llm("m", json!({}))])]}),
        None,
    )
    .unwrap_err();
    assert_eq!(
        e.path,
        "applications[0].args.llm_configs[1].model_loading_config.model_id"
    );
    let mut a = app("a", "/", vec![llm("m", json!({}))]);
    a["deployments"] = json!([{"name": "LLMServer:other", "num_replicas": 2}]);
    let e = check(json!({"applications": [a]}), None).unwrap_err();
    assert_eq!(e.path, "applications[0].deployments[0].name");
    assert!(e.message.contains("LLMServer:m"), "{e}");
}

#[test]
fn route_prefixes_follow_serve_rules() {
    for (prefix, ok) in [
        ("/", true),
        ("/a", true),
        ("/a/b", true),
        ("a", false),
        ("/a/", false),
        ("/{x}", false),
    ] {
        let r = check(
            json!({"applications": [app("a", prefix, vec![llm("m", json!({}))])]}),
            None,
        );
        assert_eq!(r.is_ok(), ok, "{prefix}: {r:?}");
    }
}

#[test]
fn llm_configs_may_be_yaml_files() {
    let dir = std::env::temp_dir().join(format!("llm-serve-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("m.yaml"),
        "model_loading_config:\n  model_id: from-file\n  model_source: default\n",
    )
    .unwrap();
    let v = json!({"applications": [app("a", "/", vec![json!("m.yaml")])]});
    let c = check(v, Some(&dir)).unwrap();
    assert_eq!(c.apps[0].deployments[1].name(), "LLMServer:from-file");
    // The checked config holds the file's contents, not its path.
    let inlined = &c.config.applications[0].args["llm_configs"][0];
    assert_eq!(inlined["model_loading_config"]["model_id"], "from-file");
    let e = check(
        json!({"applications": [app("a", "/", vec![json!("missing.yaml")])]}),
        Some(&dir),
    )
    .unwrap_err();
    assert_eq!(e.path, "applications[0].args.llm_configs[0]");
    assert!(e.message.contains("missing.yaml"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn code_version_changes_with_code_not_with_lightweight_options() {
    let base = |extra: Value| {
        let c = check(
            json!({"applications": [app("a", "/", vec![llm("m", extra)])]}),
            None,
        )
        .unwrap();
        c.apps[0].deployments[1].clone()
    };
    let a = base(json!({}));
    let light = base(json!({"deployment_config": {"num_replicas": 3, "user_config": {"x": 1}}}));
    let kwargs = base(json!({"engine_kwargs": {"max_num_seqs": 8}}));
    let actor = base(json!({"deployment_config": {"ray_actor_options": {"num_cpus": 2}}}));
    assert_eq!(a.code_version(), light.code_version());
    assert_ne!(a.code_version(), kwargs.code_version());
    assert_ne!(a.code_version(), actor.code_version());
}

#[test]
fn the_example_configs_check() {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs"));
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let checked = check(parse_text(&text).unwrap(), path.parent())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!checked.apps.is_empty());
        seen += 1;
    }
    assert!(seen >= 4, "{seen} example configs");
}

#[test]
fn a_tokenizer_from_elsewhere_is_refused() {
    let mut c = llm("m", json!({}));
    c["model_loading_config"]["tokenizer_source"] = json!("other/tokenizer");
    let value = json!({"applications": [app("a", "/", vec![c])]});
    let e = check(value, None).unwrap_err();
    assert_eq!(
        e.path,
        "applications[0].args.llm_configs[0].model_loading_config.tokenizer_source"
    );
}

#[test]
fn lora_configs_are_checked_and_defaulted() {
    let lora = |engine: Value, lora: Value| {
        let mut extra = json!({"engine_kwargs": engine});
        if !lora.is_null() {
            extra["lora_config"] = lora;
        }
        check(
            json!({"applications": [app("x", "/", vec![llm("m", extra)])]}),
            None,
        )
    };
    let spec_lora = |c: &Checked| c.apps[0].deployments[1].model().unwrap().lora.clone();
    // No lora_config, no enable_lora: no LoRA.
    assert_eq!(spec_lora(&lora(json!({}), Value::Null).unwrap()), None);
    // enable_lora alone: Ray's defaults; max_loras sizes the LRU.
    let on = spec_lora(&lora(json!({"enable_lora": true}), Value::Null).unwrap()).unwrap();
    assert_eq!(
        (
            on.max_num_adapters_per_replica,
            on.download_timeout_s,
            on.max_download_tries
        ),
        (16, Some(30.0), 3)
    );
    let four = spec_lora(&lora(json!({"max_loras": 4}), Value::Null).unwrap()).unwrap();
    assert_eq!(four.max_num_adapters_per_replica, 4);
    // A lora_config: trailing slash dropped, a non-positive timeout is none.
    let l = spec_lora(
        &lora(
            json!({}),
            json!({"dynamic_lora_loading_path": "/srv/loras/", "download_timeout_s": 0}),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(l.dynamic_lora_loading_path.as_deref(), Some("/srv/loras"));
    assert_eq!(l.download_timeout_s, None);
    // Refusals name the field.
    let cases = [
        (
            json!({"max_loras": 4}),
            json!({"max_num_adapters_per_replica": 8}),
            "engine_kwargs.max_loras",
        ),
        (
            json!({}),
            json!({"max_num_adapters_per_replica": 0}),
            "max_num_adapters_per_replica",
        ),
        (
            json!({}),
            json!({"max_download_tries": 0}),
            "max_download_tries",
        ),
        (
            json!({}),
            json!({"dynamic_lora_loading_path": "ftp://x"}),
            "dynamic_lora_loading_path",
        ),
        (
            json!({}),
            json!({"dynamic_lora_loading_path": "s3://bucket/loras"}),
            "not supported yet",
        ),
        (
            json!({}),
            json!({"lora_modules": {"a/b": "/x"}}),
            "lora_modules.a/b",
        ),
        (
            json!({}),
            json!({"lora_modules": {"a": "gs://b/a"}}),
            "lora_modules.a",
        ),
        (json!({}), json!({"unknown": 1}), "unknown"),
        (json!({"max_lora_rank": 0}), Value::Null, "max_lora_rank"),
        (json!({"max_lora_rank": 1024}), Value::Null, "max_lora_rank"),
        (json!({"lora_dtype": "int4"}), Value::Null, "lora_dtype"),
    ];
    for (engine, l, needle) in cases {
        let e = lora(engine.clone(), l.clone()).unwrap_err().to_string();
        assert!(e.contains(needle), "{engine} {l}: {e}");
    }
}
