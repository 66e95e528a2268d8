"""Host a pipecat ``FrameProcessor`` (a service, a filter) inside a vantum pipeline.

    from pipecat.services.deepgram.stt import DeepgramSTTService
    from vantum_pipeline.interop.pipecat import PipecatProcessor

    Pipeline([transport.input(), VADProcessor(), PipecatProcessor(DeepgramSTTService(api_key=...)), ...])

``PipecatProcessor(processor)`` is one of our processors. At ``StartFrame`` it
gives the hosted processor what a pipecat pipeline would (a clock, a task
manager, the setup, a ``StartFrame`` with the pipeline's audio rates), linked
between two shims: what the hosted processor pushes downstream leaves the
adapter downstream, what it pushes upstream leaves upstream. Frames are
translated both ways by the table in ``pipecat_frames.py``; a frame without a
row crosses unchanged and is counted (``unmapped_in``, ``unmapped_out``).

Our frames keep their identity: a frame of ours that pipecat passes on comes
out as the very frame that went in (its id, its epoch, every field).

Interruption stays ours. Our ``InterruptionFrame`` becomes pipecat's for the
hosted processor, and the adapter waits (``interruption_timeout``) for it to
come out the other side: pipecat has then cancelled its work. Until then,
whatever the hosted processor pushes is stamped with the interrupted epoch and
dropped by the framework; a TTS context keeps the epoch of the turn that
opened it, so late audio of a cancelled context is dropped too. An
interruption the hosted processor raises itself becomes ``push_interruption()``.

Roles, detected from the hosted processor's class:

- an STT service also ends user turns (``EndOfTurnFrame``, which our
  ``UserAggregator`` answers): after ``UserStoppedSpeakingFrame`` (from our
  VAD; pipecat's STT finalizes on it), at the first finalized transcript, or
  ``turn_timeout`` seconds later with the transcripts so far;
- an LLM service answers our ``LLMContextFrame``: the conversation is sent as
  pipecat's ``LLMContext`` (``pipecat_context.py``), and ``tools`` (our
  ``Tool``\\ s) are registered as pipecat functions whose calls and results land
  in our ``LLMContext``; ``end_call`` ends the call after the reply;
- a TTS service passes on the text it was given (our assistant aggregator
  reads it, as with our TTS services); its spoken words (``TTSTextFrame``)
  become ``TTSWordTimestampsFrame``\\ s (a word ends where the next begins,
  the last one with the context's audio), so the transport knows what the
  callee heard.

Errors: pipecat's ``ErrorFrame`` becomes ours; it is fatal (the call ends) when
pipecat marked it so or when the hosted processor is no longer usable (pipecat
gave up on its service: a rejected key, reconnects exhausted).

Teardown: ``cleanup()`` cancels the hosted processor (unless it ended), runs
its ``cleanup()`` and cancels any task its task manager still holds, all
within ``stop_timeout`` (under the pipeline's own shutdown bound).

Backpressure both ways. Frames go in through ``HostedInbox``
(``pipecat_inbox.py``): with ``max_outstanding`` frames of ours not yet
processed by the hosted processor, the adapter waits (up to
``backlog_timeout``, then hands over anyway: an overrun, counted and logged),
so a slow hosted processor makes the producers upstream wait instead of
filling pipecat's unbounded queues. When the hosted processor's input task is
idle, the inbox does what that task would do next, without waking it (one task
switch less per frame). What comes out is pushed with our backpressure, in
pipecat's task.

Importing this module without pipecat installed raises ImportError naming the
extra: ``pip install vantum-pipeline[pipecat]``.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

try:
    from pipecat.clocks.system_clock import SystemClock
    from pipecat.frames import frames as pc
    from pipecat.processors.aggregators.llm_context import LLMContext as PipecatLLMContext
    from pipecat.processors.frame_processor import FrameDirection as PipecatDirection
    from pipecat.processors.frame_processor import FrameProcessor as PipecatFrameProcessor
    from pipecat.processors.frame_processor import FrameProcessorSetup
    from pipecat.services.llm_service import FunctionCallParams, LLMService
    from pipecat.services.settings import LLMSettings
    from pipecat.services.stt_service import STTService
    from pipecat.services.tts_service import TTSService
    from pipecat.utils.asyncio.task_manager import TaskManager
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    from vantum_pipeline.interop import PIPECAT_MISSING

    raise ImportError(PIPECAT_MISSING) from exc

from loguru import logger

from vantum_pipeline.errors import ConfigurationError, ServiceError
from vantum_pipeline.frames import (
    CancelFrame,
    EndFrame,
    EndOfTurnFrame,
    EndTaskFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMContextFrame,
    MetricsFrame,
    StartFrame,
    TranscriptionFrame,
    TTSWordTimestampsFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from vantum_pipeline.interop.pipecat_context import ToolRound, system_instruction, to_pipecat_context
from vantum_pipeline.interop.pipecat_frames import (
    TTFB,
    Carried,
    CarriedKept,
    CarriedSystem,
    ForeignFrame,
    ForeignSystemFrame,
    converter_to_pipecat,
    to_ours,
)
from vantum_pipeline.interop.pipecat_inbox import HostedInbox
from vantum_pipeline.observability.metrics import LATENCY_LLM_TTFT, LATENCY_STT_FINAL, LATENCY_TTS_TTFB
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.processors.context import FunctionCall, LLMContext
from vantum_pipeline.processors.tools import Tool, ToolResult, decode_arguments, result_text

__all__ = ["PipecatProcessor"]

_DOWN = FrameDirection.DOWNSTREAM
_UP = FrameDirection.UPSTREAM
_PC_DOWN = PipecatDirection.DOWNSTREAM
_PC_UP = PipecatDirection.UPSTREAM
_ORIGIN = "_vantum_origin"
#: TTS contexts whose epoch and word timings are remembered.
_MAX_CONTEXTS = 64
_NS = 1_000_000_000
_FUNCTION_FRAMES = (
    pc.FunctionCallsStartedFrame,
    pc.FunctionCallInProgressFrame,
    pc.FunctionCallCancelFrame,
    pc.FunctionCallResultFrame,
)
#: Our frames that come out of the hosted processor but are not passed on: the adapter did at once.
_ABSORBED = (InterruptionFrame, CancelFrame, StartFrame)
#: Ours that need the adapter when they come out: those above, and the end (pipecat has stopped).
_NOT_PASSED_ON = (*_ABSORBED, EndFrame)
#: Our frames the adapter handles itself, whatever the hosted processor.
_SPECIAL = (StartFrame, InterruptionFrame, CancelFrame, ForeignFrame, ForeignSystemFrame)


def _ttfb_metric(processor: PipecatFrameProcessor) -> str:
    """Our name for what pipecat's TTFB measures in ``processor``."""
    if isinstance(processor, STTService):
        return LATENCY_STT_FINAL
    if isinstance(processor, LLMService):
        return LATENCY_LLM_TTFT
    if isinstance(processor, TTSService):
        return LATENCY_TTS_TTFB
    return TTFB


class _Shim(PipecatFrameProcessor):
    """Stands on one side of the hosted processor: what it receives leaves the adapter."""

    def __init__(self, adapter: PipecatProcessor, side: str) -> None:
        super().__init__(name=f"{adapter.name}:{side}")
        self._emerge = adapter._emerge
        self._pass_on = adapter.push_frame

    async def queue_frame(
        self, frame: pc.Frame, direction: PipecatDirection = PipecatDirection.DOWNSTREAM, callback: Any = None
    ) -> None:
        ours = _DOWN if direction is PipecatDirection.DOWNSTREAM else _UP
        origin = getattr(frame, _ORIGIN, None)
        if origin is not None and not isinstance(origin, _NOT_PASSED_ON):
            await self._pass_on(origin, ours)  # one of ours, passed on: the common case, first
            return
        await self._emerge(frame, ours)


class _Worker:
    """What a pipecat processor may ask of the pipeline worker running it."""

    def __init__(self) -> None:
        self.app_resources: dict[str, Any] = {}
        self.worker_runner: Any = None


class _Speech:
    """One TTS context as the adapter tracks it: its epoch and its words."""

    __slots__ = ("audio_seconds", "base_ns", "epoch", "pending")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.base_ns: int | None = None
        self.audio_seconds = 0.0
        self.pending: tuple[str, float] | None = None  # the last word, whose end is not known yet


class PipecatProcessor(FrameProcessor):
    """A pipecat ``FrameProcessor`` hosted as one of ours; see the module docstring.

    ``tools``: our tools offered to a hosted LLM service (with the context's own
    ``tools`` schemas, which the model sees but which run nowhere here).
    ``max_tool_rounds`` bounds the model's tool rounds per turn.
    ``turn_timeout``: an STT service's turn ends this long after its last final
    transcript when nothing else ends it. ``setup_timeout`` bounds the hosted
    processor's setup (a failure there ends the run); ``interruption_timeout``
    how long an interruption waits for it; ``stop_timeout`` its teardown.
    ``max_outstanding``: frames of ours the hosted processor may hold
    unprocessed before the adapter waits (backpressure); ``backlog_timeout``
    how long it waits before handing a frame over anyway (an overrun, counted
    in ``inbox.overruns`` and logged). ``max_queue`` bounds the adapter's own
    lanes, as for any processor: the producer upstream waits when they are full.
    ``short_way=False``: every frame goes through pipecat's ``queue_frame``
    (see ``pipecat_inbox.py``), e.g. for a service that may take long over
    a system frame, which would otherwise hold up the task that sent it.
    ``enable_metrics``: pipecat's TTFB, processing and usage metrics.
    """

    def __init__(
        self,
        processor: PipecatFrameProcessor,
        *,
        name: str | None = None,
        tools: Sequence[Tool] = (),
        max_tool_rounds: int = 3,
        turn_timeout: float = 1.0,
        setup_timeout: float = 10.0,
        interruption_timeout: float = 0.5,
        stop_timeout: float = 0.6,
        max_outstanding: int = 32,
        backlog_timeout: float = 5.0,
        max_queue: int = 256,
        short_way: bool = True,
        enable_metrics: bool = True,
    ) -> None:
        if not isinstance(processor, PipecatFrameProcessor):
            raise ConfigurationError(f"PipecatProcessor hosts a pipecat FrameProcessor, got {processor!r}")
        if tools and not isinstance(processor, LLMService):
            raise ConfigurationError(f"tools need a pipecat LLM service, {processor} is not one")
        for what, value in (
            ("turn_timeout", turn_timeout),
            ("setup_timeout", setup_timeout),
            ("interruption_timeout", interruption_timeout),
            ("stop_timeout", stop_timeout),
            ("backlog_timeout", backlog_timeout),
        ):
            if not value > 0:
                raise ConfigurationError(f"PipecatProcessor {what} must be > 0 seconds, got {value!r}")
        if max_outstanding < 1:
            raise ConfigurationError(f"PipecatProcessor max_outstanding must be >= 1, got {max_outstanding!r}")
        if max_tool_rounds < 0:
            raise ConfigurationError(f"PipecatProcessor max_tool_rounds must be >= 0, got {max_tool_rounds!r}")
        super().__init__(name=name or f"Pipecat[{processor.name}]", max_queue=max_queue)
        self.hosted = processor
        self.tools = {tool.name: tool for tool in tools}
        self.max_tool_rounds = max_tool_rounds
        self.turn_timeout = turn_timeout
        self.setup_timeout = setup_timeout
        self.interruption_timeout = interruption_timeout
        self.stop_timeout = stop_timeout
        self.enable_metrics = enable_metrics
        #: Frames that crossed without a row in the table, by class name.
        self.unmapped_in: Counter[str] = Counter()
        self.unmapped_out: Counter[str] = Counter()
        #: Frames that arrived while the hosted processor was not running (setup failed, or it ended).
        self.not_delivered = 0
        #: How frames get into the hosted processor: its backlog bound, overruns, the short way in.
        self.inbox = HostedInbox(
            processor,
            name=self.name,
            limit=max_outstanding,
            timeout=backlog_timeout,
            is_stale=self.is_stale,
            short_way=short_way,
        )
        self._routes: dict[type[Frame], Callable[[Frame], pc.Frame] | None] = {}
        self._head = _Shim(self, "in")
        self._tail = _Shim(self, "out")
        self._head.link(processor)
        processor.link(self._tail)
        self._task_manager: TaskManager | None = None
        self._clock = SystemClock()  # type: ignore[no-untyped-call]
        self._started = False
        self._finished = False  # pipecat's EndFrame came out, or we cancelled it
        self._out_epoch = 0
        self._interrupted: asyncio.Event | None = None
        self._own_interruption = False
        self._broadcast_seen: int | None = None
        self._stopped = asyncio.Event()  # pipecat's EndFrame or CancelFrame came out: it has stopped
        self._speech: OrderedDict[str, _Speech] = OrderedDict()
        self._stt = isinstance(processor, STTService)
        self._llm = isinstance(processor, LLMService)
        self._ttfb_metric = _ttfb_metric(processor)
        self._segments: list[str] = []
        self._user_speaking = False
        self._turn_deadline: asyncio.Task[None] | None = None
        self._context: LLMContext | None = None
        self._round: ToolRound | None = None
        self._system_instruction: str | None = None  # the prompt the hosted LLM service was given
        if isinstance(processor, LLMService):
            for tool in self.tools.values():
                processor.register_function(tool.name, self._run_tool)

    # ------------------------------------------------------------- frames in

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        cls = type(frame)
        try:
            convert = self._routes[cls]
        except KeyError:
            convert = self._routes[cls] = self._route(cls)
        if convert is None:
            await self._process_special(frame, direction)
            return
        theirs = convert(frame)
        setattr(theirs, _ORIGIN, frame)
        if not self._started or self._finished:
            self._not_delivered(theirs)
            return
        # An in-band frame waits while the hosted processor holds too many; if an
        # interruption comes meanwhile, it is dropped: it must not reach pipecat.
        await self.inbox.put(theirs, _PC_DOWN if direction is _DOWN else _PC_UP, frame if frame.in_band else None)

    def _route(self, cls: type[Frame]) -> Callable[[Frame], pc.Frame] | None:
        """How frames of ``cls`` cross into pipecat: a converter, or None for those
        the adapter handles itself (decided once per class)."""
        if issubclass(cls, _SPECIAL) or (self._llm and issubclass(cls, LLMContextFrame)):
            return None
        if self._stt and issubclass(cls, UserStartedSpeakingFrame | UserStoppedSpeakingFrame):
            return None  # they also end the user's turns
        return self._translation(cls)

    def _translation(self, cls: type[Frame]) -> Callable[[Frame], pc.Frame]:
        """The table's converter for ``cls``, or a carrier counted in ``unmapped_in``."""
        converter = converter_to_pipecat(cls)
        if converter is None:
            carrier = CarriedSystem if not cls.in_band else CarriedKept if cls.survives_interruption else Carried
            unmapped, name = self.unmapped_in, cls.__name__

            def carry(frame: Frame) -> pc.Frame:
                unmapped[name] += 1
                return carrier(frame=frame)

            return carry
        if cls.survives_interruption:

            def keep(frame: Frame) -> pc.Frame:
                theirs = converter(frame)
                theirs.interruptible = False  # pipecat's interruption must not flush it either
                return theirs

            return keep
        return converter

    async def _process_special(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, StartFrame):
            await self._start(frame)
            # Ours goes on first: nothing the hosted processor pushes may precede it.
            await self.push_frame(frame, direction)
            if self._started:
                start = pc.StartFrame(
                    audio_in_sample_rate=frame.audio_in_sample_rate,
                    audio_out_sample_rate=frame.audio_out_sample_rate,
                    enable_metrics=self.enable_metrics,
                    enable_usage_metrics=self.enable_metrics,
                )
                setattr(start, _ORIGIN, frame)
                # From a task of ours, like the setup: pipecat's tasks start here.
                await self.create_task(self.hosted.queue_frame(start, PipecatDirection.DOWNSTREAM), "start")
            return
        if isinstance(frame, InterruptionFrame):
            await self._interrupt(frame, direction)
            return
        if isinstance(frame, CancelFrame):
            self._finished = True
            await self._send(pc.CancelFrame(reason=frame.reason or None), direction)
            self.inbox.clear()
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, ForeignFrame | ForeignSystemFrame):
            await self._send(frame.frame, direction)  # a pipecat frame from a hosted processor upstream
            return
        if self._stt:
            self._track_user(frame)
        theirs: pc.Frame
        if isinstance(frame, LLMContextFrame):
            if isinstance(frame.context, LLMContext):
                self._context = frame.context
                self._round = ToolRound(self.max_tool_rounds)
                theirs = await self._request(frame.context, direction)
            elif isinstance(frame.context, PipecatLLMContext):
                self._context = self._round = None  # pipecat's own context: its tools are pipecat's
                theirs = pc.LLMContextFrame(frame.context)
            else:
                await self.push_error(
                    f"{self.name}: LLMContextFrame.context must be an LLMContext, got {type(frame.context).__name__}"
                )
                return
        else:
            theirs = self._translation(type(frame))(frame)
        setattr(theirs, _ORIGIN, frame)
        await self._send(theirs, direction, frame if frame.in_band else None)

    async def _request(self, context: LLMContext, direction: FrameDirection) -> pc.LLMContextFrame:
        """The pipecat request for ``context``; an LLM service first gets its system prompt.

        A pipecat LLM service takes the prompt as its ``system_instruction``
        setting (a ``"system"`` context message is deprecated there): it is
        sent as an ``LLMUpdateSettingsFrame`` ahead of the request whenever it
        changed, and the request carries the other messages.
        """
        if not self._llm:
            return pc.LLMContextFrame(to_pipecat_context(context, self.tools.values()))
        prompt = system_instruction(context)
        if prompt != self._system_instruction and self._started and not self._finished:
            self._system_instruction = prompt  # noted only once it is handed over
            delta = LLMSettings(system_instruction=prompt)
            await self._send(pc.LLMUpdateSettingsFrame(delta=delta, service=self.hosted), direction)
        return pc.LLMContextFrame(to_pipecat_context(context, self.tools.values(), system_in_context=False))

    async def _send(self, frame: pc.Frame, direction: FrameDirection, origin: Frame | None = None) -> None:
        """Hand ``frame`` over; with ``origin`` (our in-band frame), bounded by the inbox."""
        if not self._started or (self._finished and not isinstance(frame, pc.CancelFrame)):
            self._not_delivered(frame)
            return
        await self.inbox.put(frame, _PC_DOWN if direction is _DOWN else _PC_UP, origin)

    def _not_delivered(self, frame: pc.Frame) -> None:
        self.not_delivered += 1
        logger.warning("{}: {} not delivered: the hosted processor is not running", self.name, frame)

    async def _start(self, frame: StartFrame) -> None:
        self._out_epoch = frame.epoch
        # Set up in a task of ours: the tasks pipecat starts inherit its context, that of a
        # long-lived task (what they push is stamped when pushed), not that of this handler.
        setup = self.create_task(self._setup(frame), "setup", essential=True)
        try:
            await asyncio.wait_for(asyncio.shield(setup), self.setup_timeout)
        except TimeoutError:
            setup.cancel()
            raise ServiceError(
                f"{self.hosted} did not finish its setup within {self.setup_timeout:.1f}s",
                service=self.hosted.name,
                retryable=True,
            ) from None

    async def _setup(self, frame: StartFrame) -> None:
        self._task_manager = TaskManager(loop=asyncio.get_running_loop())
        self._clock.start()  # type: ignore[no-untyped-call]
        setup = FrameProcessorSetup(
            clock=self._clock,
            task_manager=self._task_manager,
            pipeline_worker=_Worker(),  # type: ignore[arg-type]  # what processors read of one
            audio_in_sample_rate=frame.audio_in_sample_rate,
            audio_out_sample_rate=frame.audio_out_sample_rate,
            enable_metrics=self.enable_metrics,
            enable_usage_metrics=self.enable_metrics,
        )
        await self.hosted.setup(setup)
        self._started = True

    async def _interrupt(self, frame: InterruptionFrame, direction: FrameDirection) -> None:
        # The TTS contexts keep their epochs: late audio of a cut context must still be dropped.
        self._round = None
        if self._own_interruption or not self._started or self._finished:
            self._out_epoch = frame.epoch
            return
        self._interrupted = asyncio.Event()
        theirs = pc.InterruptionFrame()
        setattr(theirs, _ORIGIN, frame)
        await self._send(theirs, direction)
        try:
            async with asyncio.timeout(self.interruption_timeout):
                await self._interrupted.wait()
        except TimeoutError:
            logger.warning(
                "{}: the hosted processor did not pass the interruption on within {:.1f}s",
                self.name,
                self.interruption_timeout,
            )
        finally:
            # Even when the pipeline's own bound cuts this wait short: what the hosted
            # processor pushes from now on answers the new turn.
            self._out_epoch = frame.epoch
            self.inbox.forget_interruptible()

    # ------------------------------------------------------------ frames out

    async def _emerge(self, frame: pc.Frame, direction: FrameDirection) -> None:
        """A frame the hosted processor pushed; runs in pipecat's task."""
        origin = getattr(frame, _ORIGIN, None)
        if origin is not None:
            if not isinstance(origin, _ABSORBED):
                if isinstance(origin, EndFrame):
                    self._stopped.set()
                await self.push_frame(origin, direction)
            elif isinstance(origin, InterruptionFrame):
                if self._interrupted is not None:
                    self._interrupted.set()
            elif isinstance(origin, CancelFrame):
                self._stopped.set()  # passed on at once when it came in
            return  # a StartFrame: passed on at once when it came in
        if isinstance(frame, pc.InterruptionFrame | pc.InterruptionWorkerFrame):
            await self._hosted_interruption(frame)
            return
        if isinstance(frame, pc.StartFrame):
            return
        if isinstance(frame, pc.CancelFrame):
            self._stopped.set()
            return
        if isinstance(frame, pc.EndFrame):
            self._finished = True
            self._stopped.set()
        if self._llm and await self._function_frame(frame, direction):
            return
        if isinstance(frame, pc.TTSTextFrame):
            await self._word(frame, direction)
            return
        converted = to_ours(frame)
        if converted is None:
            self.unmapped_out[type(frame).__name__] += 1
            converted = ForeignSystemFrame(frame) if isinstance(frame, pc.SystemFrame) else ForeignFrame(frame)
        for ours in converted if isinstance(converted, tuple) else (converted,):
            ours.epoch = self._epoch_of(frame)
            if isinstance(ours, MetricsFrame) and ours.metric == TTFB:
                ours.metric = self._ttfb_metric
            elif isinstance(ours, ErrorFrame) and not self.hosted.is_usable:
                # Pipecat gave up on the service (e.g. a rejected key): going on would leave
                # the call deaf or mute, so the error ends it, as an essential task's does.
                ours.fatal = True
            elif self._stt and isinstance(ours, UserStartedSpeakingFrame | UserStoppedSpeakingFrame):
                self._track_user(ours)
            if isinstance(frame, pc.TTSStoppedFrame | pc.TTSAudioRawFrame):
                await self._speech_progress(frame, direction)
            await self.push_frame(ours, direction)
            if self._stt and isinstance(ours, TranscriptionFrame) and direction is _DOWN:
                await self._transcript(ours, bool(getattr(frame, "finalized", False)))

    def _epoch_of(self, frame: pc.Frame) -> int:
        context_id = getattr(frame, "context_id", None)
        if context_id is None:
            return self._out_epoch
        return self._speech_of(context_id).epoch

    def _speech_of(self, context_id: str) -> _Speech:
        speech = self._speech.get(context_id)
        if speech is None:
            speech = self._speech[context_id] = _Speech(self._out_epoch)
            while len(self._speech) > _MAX_CONTEXTS:
                self._speech.popitem(last=False)
        return speech

    async def _hosted_interruption(self, frame: pc.Frame) -> None:
        if frame.broadcast_sibling_id is not None and frame.broadcast_sibling_id == self._broadcast_seen:
            return  # the other half of a broadcast already handled
        self._broadcast_seen = frame.id
        self.inbox.forget_interruptible()  # pipecat flushed its queue before broadcasting
        self._own_interruption = True
        try:
            await self.push_interruption()
        finally:
            self._own_interruption = False

    # ----------------------------------------------------------- TTS words

    async def _word(self, frame: pc.TTSTextFrame, direction: FrameDirection) -> None:
        """A spoken word: its start ends the word before it. The text itself is not
        passed on: pipecat's TTS passes on the text frames it was given, as ours do."""
        context_id = frame.context_id
        if context_id is not None and frame.pts is not None:
            speech = self._speech_of(context_id)
            if speech.base_ns is None:
                speech.base_ns = frame.pts
            start = max(0.0, (frame.pts - speech.base_ns) / _NS)
            await self._flush_word(speech, context_id, start, direction)
            speech.pending = (frame.text, start)

    async def _flush_word(self, speech: _Speech, context_id: str, end: float, direction: FrameDirection) -> None:
        if speech.pending is None:
            return
        word, start = speech.pending
        speech.pending = None
        stamps = TTSWordTimestampsFrame(((word, start, max(start, end)),), context_id=context_id)
        stamps.epoch = speech.epoch
        await self.push_frame(stamps, direction)

    async def _speech_progress(
        self, frame: pc.TTSAudioRawFrame | pc.TTSStoppedFrame, direction: FrameDirection
    ) -> None:
        context_id = frame.context_id
        if context_id is None:
            return
        speech = self._speech_of(context_id)
        if isinstance(frame, pc.TTSAudioRawFrame):
            if speech.base_ns is None:
                speech.base_ns = self._clock.get_time()
            speech.audio_seconds += len(frame.audio) / (2 * frame.num_channels * frame.sample_rate)
        else:
            await self._flush_word(speech, context_id, speech.audio_seconds, direction)

    # ------------------------------------------------------------ STT turns

    def _track_user(self, frame: Frame) -> None:
        if isinstance(frame, UserStartedSpeakingFrame):
            self._user_speaking = True
            if self._turn_deadline is not None:
                self._turn_deadline.cancel()
                self._turn_deadline = None
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._user_speaking = False
            self._arm_deadline()

    def _arm_deadline(self) -> None:
        if self._turn_deadline is None or self._turn_deadline.done():
            self._turn_deadline = self.create_task(self._deadline(), "turn-deadline")

    async def _deadline(self) -> None:
        await asyncio.sleep(self.turn_timeout)
        self._turn_deadline = None
        await self._end_turn()

    async def _transcript(self, frame: Frame, finalized: bool) -> None:
        text = getattr(frame, "text", "").strip()
        if text:
            self._segments.append(text)
        if self._user_speaking:
            return
        if finalized:
            if self._turn_deadline is not None:
                self._turn_deadline.cancel()
                self._turn_deadline = None
            await self._end_turn()
        else:
            self._arm_deadline()

    async def _end_turn(self) -> None:
        if not self._segments:
            return
        turn = EndOfTurnFrame(" ".join(self._segments))
        turn.epoch = self.epoch  # a new user turn belongs to the current epoch
        self._segments.clear()
        await self.push_frame(turn)

    # ------------------------------------------------------------ LLM tools

    async def _function_frame(self, frame: pc.Frame, direction: FrameDirection) -> bool:
        """Pipecat's function-call frames; True when handled here.

        Pipecat sends some of them both ways; the downstream copy counts."""
        if isinstance(frame, _FUNCTION_FRAMES) and direction is _UP:
            return True
        if isinstance(frame, pc.FunctionCallsStartedFrame):
            if self._context is not None and self._round is not None:
                calls = [
                    FunctionCall(call.tool_call_id, call.function_name, json.dumps(dict(call.arguments or {})))
                    for call in frame.function_calls
                ]
                self._context.add_tool_calls(calls)
                self._round.expect(call.id for call in calls)
            return True
        if isinstance(frame, pc.FunctionCallInProgressFrame | pc.FunctionCallCancelFrame):
            return True
        if isinstance(frame, pc.LLMTextFrame) and self._round is not None and frame.text.strip():
            self._round.spoke = True
            return False
        if isinstance(frame, pc.FunctionCallResultFrame):
            round_ = self._round
            if round_ is not None and round_.settle(frame.tool_call_id) and self._context is not None:
                if round_.continue_model():
                    await self._send(await self._request(self._context, _DOWN), _DOWN)
                elif round_.end_call:
                    await self._end_call()
            return True
        if isinstance(frame, pc.LLMFullResponseEndFrame) and self._round is not None and self._round.ending():
            ours = to_ours(frame)
            assert isinstance(ours, Frame)
            ours.epoch = self._out_epoch
            await self.push_frame(ours)
            await self._end_call()
            return True
        return False

    async def _end_call(self) -> None:
        """``end_call`` was called: the task ends the call once what is queued has played."""
        request = EndTaskFrame(reason="end_call")
        request.epoch = self._out_epoch
        await self.push_frame(request, _UP)

    async def _run_tool(self, params: FunctionCallParams) -> None:
        """A pipecat function handler running one of our tools."""
        tool = self.tools.get(params.function_name)
        result: ToolResult
        try:
            if tool is None:
                raise ConfigurationError(f"no tool named {params.function_name!r}")
            arguments = decode_arguments(tool, json.dumps(dict(params.arguments or {})))
            async with asyncio.timeout(tool.timeout):
                produced = await tool.handler(arguments)
            result = produced if isinstance(produced, ToolResult) else ToolResult(produced)
        except Exception as exc:
            logger.warning("{}: tool {} failed: {}", self.name, params.function_name, exc)
            result = ToolResult({"error": f"{type(exc).__name__}: {exc}"})
        content = result_text(result.content)
        if self._context is not None:
            self._context.add_tool_result(params.tool_call_id, content)
        if self._round is not None:
            self._round.record(result)
        await params.result_callback(content, properties=pc.FunctionCallResultProperties(run_llm=False))

    # ------------------------------------------------------------- teardown

    async def cleanup(self) -> None:
        """Stop the hosted processor: let it see a CancelFrame (unless it ended),
        run its ``cleanup()``, then cancel what its task manager still holds,
        within ``stop_timeout`` in all."""
        if not self._started:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_timeout
        try:
            async with asyncio.timeout(self.stop_timeout * 0.4):
                if not self._finished:
                    self._finished = True
                    await self.hosted.queue_frame(pc.CancelFrame(reason="pipeline stopped"))
                await self._stopped.wait()  # it closed its connections
        except TimeoutError:
            logger.warning("{}: the hosted processor did not stop within {:.2f}s", self.name, self.stop_timeout * 0.4)
        try:
            async with asyncio.timeout(max(0.01, deadline - loop.time()) * 0.7):
                await self.hosted.cleanup()  # type: ignore[no-untyped-call]
        except TimeoutError:
            logger.warning("{}: the hosted processor's cleanup did not finish in time", self.name)
        except Exception as exc:
            logger.opt(exception=exc).error("{}: the hosted processor's cleanup failed: {}", self.name, exc)
        finally:
            # Cut short by the pipeline's own bound, the sweep below may never run: cancel now.
            for task in self.pipecat_tasks:
                if task is not asyncio.current_task():
                    task.cancel()
        await self._sweep(max(0.01, deadline - loop.time()))

    async def _sweep(self, timeout: float) -> None:
        """Cancel whatever task the hosted processor left behind."""
        manager = self._task_manager
        if manager is None:
            return
        current = asyncio.current_task()
        left = [task for task in manager.current_tasks() if not task.done() and task is not current]
        for task in left:
            task.cancel()
        if left:
            _, pending = await asyncio.wait(left, timeout=timeout)
            for task in pending:
                logger.error("{}: pipecat task {} did not stop", self.name, task.get_name())

    @property
    def pipecat_tasks(self) -> list[asyncio.Task[Any]]:
        """The hosted processor's tasks still running (none once the pipeline stopped)."""
        if self._task_manager is None:
            return []
        return [task for task in self._task_manager.current_tasks() if not task.done()]
