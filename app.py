"""sectensor's demo: a frozen vision-language model with and without a security tensor, side by side.

    python app.py                                    # the embedded organism and its shipped tensors, 127.0.0.1:7860
    python app.py --model llava-hf/llava-1.5-7b-hf --tensor USER/llava-1.5-7b-visual --host 0.0.0.0
    SECTENSOR_MODEL=... SECTENSOR_TENSORS=a,b python app.py

Every flag has an environment variable (see `python app.py --help`), so a Hugging Face Space is configured
through its settings alone.
"""

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # serve without calling home, as on an offline machine


def main(argv: list[str] | None = None) -> int:
    from sectensor.demo import DemoService, settings_from
    from sectensor.errors import SectensorError

    try:
        settings = settings_from(argv)
        service = DemoService.load(settings.model, settings.tensors, settings.device, settings.threads)
    except (SectensorError, ValueError) as error:
        print(f"app.py: {error}", file=sys.stderr)
        return 2
    for problem in service.problems:
        print(f"app.py: warning: {problem}", file=sys.stderr)
    from sectensor.demo.ui import build_demo, launch

    launch(build_demo(service, settings), settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
