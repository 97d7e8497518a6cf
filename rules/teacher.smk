rule steering_vector:
    input:
        model=model_manifest,
    output:
        "results/{model}/steering/{behavior}.safetensors",
    log:
        "logs/{model}/steering/{behavior}.log",
    benchmark:
        "logs/{model}/benchmarks/steering/{behavior}.tsv"
    priority: ROOT_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(3000),
    params:
        behavior=get_behavior,
        model_settings=config["model_settings"],
    script:
        "../scripts/steering_vector.py"


rule teacher:
    input:
        unpack(teacher_inputs),
    output:
        "results/{model}/teacher/{behavior}.parquet",
    log:
        "logs/{model}/teacher/{behavior}.log",
    benchmark:
        "logs/{model}/benchmarks/teacher/{behavior}.tsv"
    priority: ROOT_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(3000),
    params:
        behavior=get_behavior,
        messages=config["messages"],
        model_settings=config["model_settings"],
        teacher=config["teacher"],
    script:
        "../scripts/teacher.py"


rule distill_lora:
    input:
        unpack(distill_inputs),
    output:
        adapter="results/{model}/lora/{behavior}/adapter_model.safetensors",
        curve="results/{model}/lora/{behavior}/curve.csv",
    log:
        "logs/{model}/lora/{behavior}.log",
    benchmark:
        "logs/{model}/benchmarks/lora/{behavior}.tsv"
    priority: ROOT_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        **model_resources(4500),
    params:
        source=lambda wc: behavior(
            config, behavior(config, wc.behavior)["distill"]["from"]
        ),
        distill=distill_params,
        model_settings=config["model_settings"],
    script:
        "../scripts/distill_lora.py"
