"""One local Ray, one Prefect harness and one small toy world per test session."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def toy_images(tmp_path_factory):
    """A 260-row toy image world (seed 4242) written as Parquet shards and webdataset tars, with its labels."""
    from toyworld.images import generate_image_records, write_image_dataset

    out = tmp_path_factory.mktemp("toy") / "images"
    records = generate_image_records(4242, 260)
    write_image_dataset(out, records, rows_per_shard=100)
    labels = pq.read_table(out / "labels.parquet").to_pandas().set_index("key")
    return out, labels


@pytest.fixture(scope="session")
def curated(toy_images, ray_local, tmp_path_factory):
    """The toy Parquet shards curated once with the toy profile."""
    from pipelines.config import load_config
    from pipelines.runtime import run_job

    src, _ = toy_images
    out = tmp_path_factory.mktemp("curated") / "out"
    return run_job("curate_images", load_config("toy"), src / "parquet", out)


@pytest.fixture(scope="session")
def toy_video_world(tmp_path_factory):
    """A small toy world with labelled video kinds and dancers (seed 4343): videos/ and dancers/ with labels."""
    from toyworld.generate import generate_world

    out = tmp_path_factory.mktemp("toyvid") / "world"
    generate_world(out, seed=4343, images=0, videos=40, dancers=6)
    return out


@pytest.fixture(scope="session")
def curated_videos(toy_video_world, ray_local, tmp_path_factory):
    """The toy world's clips curated once with the toy profile (stage 2 and 3 train on them)."""
    from pipelines.config import load_config
    from pipelines.runtime import run_job

    out = tmp_path_factory.mktemp("curvid") / "out"
    return run_job("curate_videos", load_config("toy"), toy_video_world / "videos" / "wds", out)


@pytest.fixture(scope="session")
def recaptioned(toy_video_world, ray_local, tmp_path_factory):
    """The toy dancers recaptioned once with the toy BLIP (with pose control frames; stage 3's control data)."""
    from pipelines.config import load_config
    from pipelines.runtime import run_job

    out = tmp_path_factory.mktemp("recap") / "out"
    return run_job("recaption", load_config("toy"), toy_video_world / "dancers", out)
