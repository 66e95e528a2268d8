"""The smallest pipeline: text in, upper-cased text out, with an interruption.

python examples/hello_pipeline.py
"""

import asyncio

from vantum_pipeline import FrameDirection, FrameProcessor, Pipeline, PipelineTask
from vantum_pipeline.frames import EndFrame, Frame, InterruptionFrame, TextFrame


class Shout(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, TextFrame):
            frame = TextFrame(frame.text.upper())
        await self.push_frame(frame, direction)


class Print(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, TextFrame):
            print("bot says:", frame.text)
        elif isinstance(frame, InterruptionFrame):
            print("-- interrupted --")
        await self.push_frame(frame, direction)


async def main() -> None:
    task = PipelineTask(Pipeline([Shout(), Print()]))
    await task.queue_frames([TextFrame("hello"), TextFrame("this is vantum"), InterruptionFrame(), EndFrame()])
    await task.run()
    print("finished:", task.finish_reason)


if __name__ == "__main__":
    asyncio.run(main())
