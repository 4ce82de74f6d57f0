"""Which models and versions to serve: the ModelServerConfig, its checks, and the version policy.

What TF Serving's ServerCore checks in a config (names, absolute base paths,
the TensorFlow platform), how its file-system source finds versions (numeric
sub-directories of a base path, ``file://`` taken as local), and which of
them a model's ``model_version_policy`` aspires to. Pure functions of their
arguments and the file system; :class:`~fmnist.serving.models.ModelManager`
acts on their answers.

Usage::

    config = read_config_file("models.config")    # or single_model_config("m", "/models/m")
    validate_config(config)                          # INVALID_ARGUMENT ServingErrors, in TF Serving's words
    aspired = aspired_versions(config.model_config_list.config[0], list(version_folders(base_path)))

Thread safety: pure functions (of their arguments and the file system).
"""

from __future__ import annotations

import os

from fmnist.common import errors
from fmnist.common.apis import model_server_config_pb2  # without starting TensorFlow: fmnist serve checks first
from fmnist.serving import protos

FILE_SCHEME = "file://"
TENSORFLOW_PLATFORM = "tensorflow"


def version_folders(base_path: str) -> dict[int, str]:
    """Version → folder name for the numeric sub-directories of ``base_path``, oldest first.

    A folder name is parsed as a number, as TF Serving's file-system source
    does, so ``00000123`` is version 123 (and is loaded from ``00000123``);
    anything else (staging dirs, files) is ignored. Raises OSError when
    ``base_path`` itself cannot be listed: a missing base path is not an
    empty one, and must not unload what is serving.
    """
    folders: dict[int, str] = {}
    with os.scandir(local_path(base_path)) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.isascii() and entry.name.isdigit() and entry.is_dir():
                folders.setdefault(int(entry.name), entry.name)
    return dict(sorted(folders.items()))


def local_path(base_path: str) -> str:
    """A base path as a local path: TF Serving takes ``file://`` URIs for local directories."""
    return base_path[len(FILE_SCHEME) :] if base_path.startswith(FILE_SCHEME) else base_path


def _is_relative(base_path: str) -> bool:
    """TF Serving's UriIsRelativePath: no scheme, no host and not an absolute path."""
    return "://" not in base_path and not os.path.isabs(base_path)


def aspired_versions(config: model_server_config_pb2.ModelConfig, present: list[int]) -> set[int]:
    """The versions the model's version policy wants loaded, of those on disk."""
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(present)
    if choice == "specific":
        return set(present) & set(policy.specific.versions)
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
    return set(present[-count:])


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
    """The config ``--model_name``/``--model_base_path`` stand for."""
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name, entry.base_path, entry.model_platform = name, base_path, TENSORFLOW_PLATFORM
    return config


def read_config_file(path: str | os.PathLike) -> model_server_config_pb2.ModelServerConfig:
    """Parse a text-format ModelServerConfig file (``--model_config_file``); ValueError if bad."""
    return protos.parse_text_file(path, model_server_config_pb2.ModelServerConfig())


def validate_config(config: model_server_config_pb2.ModelServerConfig) -> None:
    """ServerCore's checks, as INVALID_ARGUMENT ServingErrors."""
    if config.WhichOneof("config") != "model_config_list":
        raise errors.InvalidArgument(
            "ServerModelConfig type not supported by HandleReloadConfigRequest. "
            "Only ModelConfigList is currently supported"
        )
    seen: set[str] = set()
    for entry in config.model_config_list.config:
        if not entry.name:
            raise errors.InvalidArgument("Model config entry without a name")
        if entry.name in seen:
            raise errors.InvalidArgument(f"Illegal to list model {entry.name} multiple times in config list")
        seen.add(entry.name)
        if not entry.base_path:
            raise errors.InvalidArgument(f"Model {entry.name} has no base_path")
        if _is_relative(entry.base_path):
            raise errors.InvalidArgument(
                f"Expected model {entry.name} to have an absolute path or URI; got base_path()={entry.base_path}"
            )
    for entry in config.model_config_list.config:
        _check_platform(entry)


def _check_platform(entry: model_server_config_pb2.ModelConfig) -> None:
    """ServerCore's GetPlatform checks: TensorFlow, named by ``model_platform`` or the deprecated ``model_type``."""
    if entry.model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
        if entry.model_platform:
            raise errors.InvalidArgument(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and ModelServerConfig::model_platform."
            )
        if entry.model_type != model_server_config_pb2.TENSORFLOW:
            raise errors.InvalidArgument(f"ModelServerConfig::model_type choice {entry.model_type} not supported.")
        return
    if not entry.model_platform:
        raise errors.InvalidArgument(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor ModelServerConfig::model_platform."
        )
    if entry.model_platform != TENSORFLOW_PLATFORM:
        raise errors.InvalidArgument(f"Model {entry.name} has unsupported model_platform '{entry.model_platform}'")
