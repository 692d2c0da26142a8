"""The cluster launcher config and the KubeRay manifests parse and validate offline."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_passes_the_ray_launcher_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config  # pinned to Ray 2.60

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["docker"]["image"] == "rayproject/ray:2.60.0-py311-cpu"


def test_kuberay_manifests_run_etl_actors_on_ray_2_60():
    cluster = yaml.safe_load((ROOT / "deploy/kuberay/raycluster.yaml").read_text())
    job = yaml.safe_load((ROOT / "deploy/kuberay/rayjob.yaml").read_text())
    assert (cluster["kind"], cluster["spec"]["rayVersion"]) == ("RayCluster", "2.60.0")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    assert job["spec"]["entrypoint"].startswith("etl-actors run /app/examples/")
    assert (ROOT / job["spec"]["entrypoint"].split()[2].replace("/app/", "")).exists()
