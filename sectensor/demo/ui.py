"""The Gradio interface: base model and protected model side by side, what the tensor looks like, inside the model.

Everything slow runs through `DemoService`; this module only lays out components and wires events. Handlers that
run the model are wrapped in `spaces.GPU` (a GPU is attached for that call on ZeroGPU Spaces; elsewhere a no-op) and
share one concurrency group, so one request at a time uses the model (δt's embedding hook is not re-entrant).
"""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr
import spaces

from ..adapters.base import PLACED_BEFORE
from ..analysis import inside_the_model as layer_analysis
from ..errors import SectensorError
from .examples import IMAGES, gallery_sections
from .service import MAX_NEW_TOKENS, MAX_TEMPERATURE, Answers, DemoService, TensorViews
from .settings import DemoSettings

MODEL_GROUP = "model"  # concurrency group of every handler that touches the model
BADGE_WAITING = '<span class="badge waiting">answering…</span>'
BADGE_REFUSED = '<span class="badge refused">Refused</span>'
BADGE_ANSWERED = '<span class="badge answered">Answered</span>'
BADGE_NONE = '<span class="badge">no tensor loaded</span>'
CSS = """
#base-badge, #protected-badge {min-height: 2.2em}
.badge {display: inline-block; padding: 0.2em 0.7em; border-radius: 0.8em; font-weight: 600;
        background: var(--neutral-200); color: var(--neutral-800)}
.badge.refused {background: #b91c1c; color: white}
.badge.answered {background: #15803d; color: white}
.notice {color: var(--body-text-color-subdued)}
"""


class UploadedImage(gr.Image):
    """An image input whose upload reaches the handler undecoded, so `sectensor.data.open_image` decodes it.

    Gradio's own preprocessing opens the file with PIL and fails with PIL's message on a corrupt upload; here such a
    file gets sectensor's message. It renders as a normal image input (`is_template`).
    """

    is_template = True

    def preprocess(self, payload):
        if payload is None or payload.path is None:
            return super().preprocess(payload)
        return payload.path


def _badges(state: Answers) -> tuple[str, str]:
    """Badges for the base and protected columns: waiting until the answers are complete, then the judge's call."""
    def one(text: str | None, refused: bool) -> str:
        if text is None:
            return BADGE_NONE
        if not state.done:
            return BADGE_WAITING
        return BADGE_REFUSED if refused else BADGE_ANSWERED

    return one(state.base, state.base_refused), one(state.protected, state.protected_refused)


def _notices(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def _visual_table(numbers: dict) -> str:
    head = (f"**δv** shape {tuple(numbers['shape'])}, clamp ±{numbers['threshold']:g} (normalized units) · "
            f"L∞ {numbers['L∞']:.3f} · L2 {numbers['L2']:.2f} · mean {numbers['mean']:+.4f} · "
            f"mean |δv| {numbers['mean |δv|']:.3f} · {numbers['share at ±threshold']:.1%} of values at the "
            "clamp\n\n")
    columns = list(numbers["channels"][0])
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for channel in numbers["channels"]:
        rows.append("| " + " | ".join(v if isinstance(v, str) else f"{v:.4g}" for v in channel.values()) + " |")
    return head + "\n".join(rows)


def _textual_summary(numbers: dict) -> str:
    low, mean, high = numbers["token L2 min / mean / max"]
    return (f"**δt**: {numbers['num_tokens']} virtual tokens × {numbers['hidden_size']} dimensions, inserted just "
            f"before {PLACED_BEFORE[numbers['placement']]} · total L2 "
            f"{numbers['L2']:.3g} · per-token L2 min {low:.3g} / mean {mean:.3g} / max {high:.3g} (the vocabulary's "
            f"embeddings average {numbers['vocabulary token L2 mean']:.3g}). The table lists the vocabulary tokens "
            f"nearest each virtual token by cosine similarity.")


def _nearest_rows(numbers: dict) -> list[list]:
    return [
        [row["virtual token"], round(row["L2"], 4),
         ", ".join(f"{token!r} ({score:.2f})" for token, score in row["nearest tokens"])]
        for row in numbers["nearest"]
    ]


def build_demo(service: DemoService, settings: DemoSettings) -> gr.Blocks:
    """The app's Blocks, wired to `service`."""
    lvlm = service.lvlm
    choices = list(service.tensors)

    def answer(image_path, prompt, tensor_label, max_new_tokens, temperature=0.0) -> Iterator[tuple]:
        try:
            for state in service.answer(image_path, prompt, tensor_label, int(max_new_tokens), float(temperature)):
                yield (state.base, state.protected or "", *_badges(state), _notices(state.notices))
        except SectensorError as error:
            raise gr.Error(str(error), title="Cannot answer") from None

    def show_views(image_path, tensor_label) -> tuple:
        try:
            views: TensorViews = service.views(image_path, tensor_label)
        except SectensorError as error:
            raise gr.Error(str(error), title="Cannot show the tensor") from None
        visual, textual = views.kind == "visual", views.kind == "textual"
        pictures = views.pictures
        return (
            gr.Group(visible=visual),
            (pictures.model_view, pictures.protected_view) if pictures else None,
            views.amplified, views.heatmap,
            (_visual_table(views.numbers) if visual else "")
            + (f"\n\nWith δv, {pictures.clipped_fraction:.1%} of this picture's values leave the range a screen can "
               "show; they are drawn clipped, but the model sees them as they are." if pictures else ""),
            gr.Group(visible=textual),
            _textual_summary(views.numbers) if textual else "",
            _nearest_rows(views.numbers) if textual else [],
            views.notice,
        )

    def inside_the_model(tensor_label):
        tensor = service.tensor(tensor_label)
        if tensor is None:
            raise gr.Error("Load a security tensor to compare the model with and without it.", title="No tensor")
        results, figure = layer_analysis(lvlm, tensor)
        return figure, _analysis_summary(results)

    answer_on_gpu = spaces.GPU(duration=settings.gpu_duration)(answer)
    analysis_on_gpu = spaces.GPU(duration=max(settings.gpu_duration, 120))(inside_the_model)

    with gr.Blocks(title="sectensor: security tensors") as demo:
        gr.Markdown(
            "# 🛡️ Security tensors\n"
            "A **security tensor** is a small trained input perturbation — δv added to the picture's preprocessed "
            "pixels, or δt, a few virtual tokens — that makes a frozen vision-language model apply the safety it "
            "learned from text to harmful *pictures*, without changing a single weight "
            "([arXiv 2507.20994](https://arxiv.org/abs/2507.20994)). Both columns come from one batched generation "
            f"of the same model: **{lvlm.name_or_path.rstrip('/').split('/')[-1]}** ({lvlm.architecture})."
        )
        gr.Markdown(_notices([f"⚠️ {problem}" for problem in service.problems]), elem_id="load-problems",
                    visible=bool(service.problems))
        with gr.Tab("Side by side"):
            with gr.Row():
                with gr.Column(scale=2):
                    image = UploadedImage(label="Picture (optional)", type="filepath", sources=["upload", "clipboard"],
                                          height=260)
                    prompt = gr.Textbox(label="Prompt", placeholder="How do I make one of these?", lines=2,
                                        max_lines=6)
                    tensor = gr.Dropdown(choices, value=choices[0] if choices else None, label="Security tensor",
                                         interactive=bool(choices))
                    with gr.Accordion("Generation settings", open=False):
                        max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=48, step=1, label="Max new tokens")
                        temperature = gr.Slider(0, MAX_TEMPERATURE, value=0, step=0.05,
                                                label="Temperature (0 = greedy, the same decoding for both columns)")
                    run = gr.Button("Answer side by side", variant="primary")
                    notices = gr.Markdown(elem_classes="notice", elem_id="notices")
                with gr.Column(scale=3):
                    with gr.Row(equal_height=True):
                        with gr.Column():
                            base_badge = gr.HTML(elem_id="base-badge")
                            base_text = gr.Textbox(label="Base model", lines=8, interactive=False,
                                                   elem_id="base-answer")
                        with gr.Column():
                            protected_badge = gr.HTML(elem_id="protected-badge")
                            protected_text = gr.Textbox(label="Protected (with the security tensor)", lines=8,
                                                        interactive=False, elem_id="protected-answer")
            gr.Markdown("### Examples\nOne click fills the inputs and answers. The wording never names the "
                        "pictured object: the picture alone carries the harm.")
            sections = gallery_sections()
            example_sets = []
            with gr.Row():
                for half in (sections[: (len(sections) + 1) // 2], sections[(len(sections) + 1) // 2 :]):
                    with gr.Column():
                        example_sets += [
                            gr.Examples(rows, inputs=[image, prompt], label=title, examples_per_page=len(rows),
                                        elem_id=elem_id)
                            for elem_id, title, rows in half
                        ]
        with gr.Tab("What the tensor looks like"):
            views_notice = gr.Markdown(elem_classes="notice")
            with gr.Group(visible=False) as visual_group:
                with gr.Row():
                    # PNG, not Gradio's default WebP: lossy compression would blur δv's pixels
                    slider = gr.ImageSlider(label="The model's view: without | with δv", type="pil", format="png",
                                            height=340, max_height=340, elem_id="delta-slider")
                    amplified = gr.Image(label="δv at full contrast (grey = 0)", type="pil", format="png", height=340,
                                         elem_id="delta-amplified")
                    heatmap = gr.Image(label="|δv| per pixel", type="pil", format="png", height=340,
                                       elem_id="delta-heatmap")
                visual_numbers = gr.Markdown(elem_id="delta-numbers")
            with gr.Group(visible=False) as textual_group:
                textual_summary = gr.Markdown(elem_id="textual-numbers")
                nearest = gr.Dataframe(headers=["virtual token", "L2", "nearest vocabulary tokens (cosine)"],
                                       interactive=False, max_height=420, elem_id="textual-nearest")
        with gr.Tab("Inside the model"):
            gr.Markdown("Per-layer cosine similarity of the last token's hidden state: pairs of normal queries versus "
                        "normal–malicious pairs, for text, for pictures without the tensor and with it. A gap in the "
                        "middle layers is the paper's sign of the language model's safety layers at work.")
            analyse = gr.Button("Compute the curves for the chosen tensor")
            analysis_plot = gr.Plot(label="Per-layer similarity")
            analysis_text = gr.Markdown()

        answer_outputs = [base_text, protected_text, base_badge, protected_badge, notices]
        answer_inputs = [image, prompt, tensor, max_new_tokens, temperature]
        view_outputs = [visual_group, slider, amplified, heatmap, visual_numbers, textual_group, textual_summary,
                        nearest, views_notice]
        answered = [gr.on([run.click, prompt.submit], answer_on_gpu, answer_inputs, answer_outputs,
                          api_name="side_by_side", concurrency_id=MODEL_GROUP)]
        for examples in example_sets:  # an example's picture arrives without a change event: answer, then redraw
            answered.append(examples.load_input_event.then(
                answer_on_gpu, answer_inputs, answer_outputs, api_visibility="private", concurrency_id=MODEL_GROUP
            ))
        gr.on([demo.load, image.change, tensor.change], show_views, [image, tensor], view_outputs,
              api_name="tensor_views", concurrency_id=MODEL_GROUP)
        for event in answered:
            event.then(show_views, [image, tensor], view_outputs, api_visibility="private", concurrency_id=MODEL_GROUP)
        analyse.click(analysis_on_gpu, [tensor], [analysis_plot, analysis_text], api_name="inside_the_model",
                      concurrency_id=MODEL_GROUP)
        gr.api(service.status, api_name="status")
    return demo


def _analysis_summary(results: dict) -> str:
    """One row per condition: where the N–N minus N–M gap is widest."""
    rows = ["| queries | widest gap at layer | gap there | layers with ≥ half of it | mean gap |",
            "|---|---|---|---|---|"]
    for condition, curves in results.get("conditions", {}).items():
        band = "–".join(str(layer) for layer in curves["band"]) or "none"
        rows.append(f"| {condition.replace('_', ' ')} | {curves['peak_layer']} | {curves['peak_gap']:.3g} | {band} | "
                    f"{curves['mean_gap']:.3g} |")
    return f"{results.get('num_layers', '?')} layers; {results.get('layer_numbering', '')}.\n\n" + "\n".join(rows)


def launch(demo: gr.Blocks, settings: DemoSettings, **kwargs) -> None:
    """Queue (bounded) and serve; only the example pictures are readable through the app's file route."""
    demo.queue(default_concurrency_limit=1, max_size=settings.queue_size)
    demo.launch(
        server_name=settings.host, server_port=settings.port, max_file_size=settings.max_file_size,
        allowed_paths=[str(IMAGES)], theme=gr.themes.Soft(), css=CSS, show_error=False, **kwargs,
    )
