from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SampleFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLE_FORMAT_UNSPECIFIED: _ClassVar[SampleFormat]
    SAMPLE_FORMAT_INT16: _ClassVar[SampleFormat]
    SAMPLE_FORMAT_FLOAT32: _ClassVar[SampleFormat]

class FrameStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_STATUS_OK: _ClassVar[FrameStatus]
    FRAME_STATUS_IDLE: _ClassVar[FrameStatus]
SAMPLE_FORMAT_UNSPECIFIED: SampleFormat
SAMPLE_FORMAT_INT16: SampleFormat
SAMPLE_FORMAT_FLOAT32: SampleFormat
FRAME_STATUS_OK: FrameStatus
FRAME_STATUS_IDLE: FrameStatus

class AudioChunk(_message.Message):
    __slots__ = ("seq", "sample_rate", "sample_format", "pcm", "package")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    sample_rate: int
    sample_format: SampleFormat
    pcm: bytes
    package: str
    def __init__(self, seq: _Optional[int] = ..., sample_rate: _Optional[int] = ..., sample_format: _Optional[_Union[SampleFormat, str]] = ..., pcm: _Optional[bytes] = ..., package: _Optional[str] = ...) -> None: ...

class SwitchPackage(_message.Message):
    __slots__ = ("seq", "package")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    package: str
    def __init__(self, seq: _Optional[int] = ..., package: _Optional[str] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("audio", "switch_package", "stats")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    SWITCH_PACKAGE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    audio: AudioChunk
    switch_package: SwitchPackage
    stats: StatsRequest
    def __init__(self, audio: _Optional[_Union[AudioChunk, _Mapping]] = ..., switch_package: _Optional[_Union[SwitchPackage, _Mapping]] = ..., stats: _Optional[_Union[StatsRequest, _Mapping]] = ...) -> None: ...

class StreamReply(_message.Message):
    __slots__ = ("frame", "error", "stats")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    frame: Frame
    error: Error
    stats: Stats
    def __init__(self, frame: _Optional[_Union[Frame, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., stats: _Optional[_Union[Stats, _Mapping]] = ...) -> None: ...

class WindowRequest(_message.Message):
    __slots__ = ("seq", "frame_id", "sample_rate", "sample_format", "pcm", "package")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    frame_id: int
    sample_rate: int
    sample_format: SampleFormat
    pcm: bytes
    package: str
    def __init__(self, seq: _Optional[int] = ..., frame_id: _Optional[int] = ..., sample_rate: _Optional[int] = ..., sample_format: _Optional[_Union[SampleFormat, str]] = ..., pcm: _Optional[bytes] = ..., package: _Optional[str] = ...) -> None: ...

class GenerateBatchRequest(_message.Message):
    __slots__ = ("windows",)
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    windows: _containers.RepeatedCompositeFieldContainer[WindowRequest]
    def __init__(self, windows: _Optional[_Iterable[_Union[WindowRequest, _Mapping]]] = ...) -> None: ...

class GenerateBatchReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[StreamReply]
    def __init__(self, results: _Optional[_Iterable[_Union[StreamReply, _Mapping]]] = ...) -> None: ...

class Bounds(_message.Message):
    __slots__ = ("x0", "y0", "x1", "y1")
    X0_FIELD_NUMBER: _ClassVar[int]
    Y0_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    x0: int
    y0: int
    x1: int
    y1: int
    def __init__(self, x0: _Optional[int] = ..., y0: _Optional[int] = ..., x1: _Optional[int] = ..., y1: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("seq", "status", "base_frame", "server_us", "bounds", "jpeg", "tier")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BASE_FRAME_FIELD_NUMBER: _ClassVar[int]
    SERVER_US_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    JPEG_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    seq: int
    status: FrameStatus
    base_frame: int
    server_us: int
    bounds: Bounds
    jpeg: bytes
    tier: str
    def __init__(self, seq: _Optional[int] = ..., status: _Optional[_Union[FrameStatus, str]] = ..., base_frame: _Optional[int] = ..., server_us: _Optional[int] = ..., bounds: _Optional[_Union[Bounds, _Mapping]] = ..., jpeg: _Optional[bytes] = ..., tier: _Optional[str] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("seq", "code", "name", "text")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    code: int
    name: str
    text: str
    def __init__(self, seq: _Optional[int] = ..., code: _Optional[int] = ..., name: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ("seq", "json")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    json: str
    def __init__(self, seq: _Optional[int] = ..., json: _Optional[str] = ...) -> None: ...

class ListPackagesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPackagesReply(_message.Message):
    __slots__ = ("packages",)
    PACKAGES_FIELD_NUMBER: _ClassVar[int]
    packages: _containers.RepeatedCompositeFieldContainer[PackageInfo]
    def __init__(self, packages: _Optional[_Iterable[_Union[PackageInfo, _Mapping]]] = ...) -> None: ...

class PackageRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PackageInfo(_message.Message):
    __slots__ = ("name", "frames", "fps", "width", "height", "crop_size", "train_frames", "tiers", "loaded")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CROP_SIZE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FRAMES_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    name: str
    frames: int
    fps: float
    width: int
    height: int
    crop_size: int
    train_frames: int
    tiers: _containers.RepeatedScalarFieldContainer[str]
    loaded: bool
    def __init__(self, name: _Optional[str] = ..., frames: _Optional[int] = ..., fps: _Optional[float] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., crop_size: _Optional[int] = ..., train_frames: _Optional[int] = ..., tiers: _Optional[_Iterable[str]] = ..., loaded: _Optional[bool] = ...) -> None: ...

class UnloadPackageReply(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
