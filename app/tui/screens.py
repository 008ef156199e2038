"""The chat app's modal screens: the model screens, and the settings of the chat.

The settings screen edits the system prompt and the common model parameters of
the chat; each value is checked with the same rules as a Modelfile's PARAMETER
lines, so what the screen accepts the server accepts too.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.validation import ValidationResult, Validator
from textual.widgets import Button, Footer, Input, Label, Static, TextArea

from app.store.parameters import PARAMETERS, ParameterError, coerce
from app.tui.models_screen import (
    ConfirmScreen,
    InfoScreen,
    ModelPicker,
    PullScreen,
    info_rows,
    model_parameters,
    panel_css,
    parameter_defaults,
)

__all__ = [
    "FORM_PARAMETERS",
    "ConfirmScreen",
    "InfoScreen",
    "ModelPicker",
    "PullScreen",
    "SettingsScreen",
    "info_rows",
    "model_parameters",
    "parameter_defaults",
    "parse_field",
]

#: The parameters the settings form offers, in the order it shows them.
FORM_PARAMETERS = (
    "num_ctx",
    "num_predict",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "repeat_last_n",
    "seed",
    "stop",
)


def parse_field(name: str, text: str) -> Any:
    """The typed value of a form field, or None when it is empty (the parameter is unset).

    `stop` takes several strings separated by commas. Raises ParameterError for a bad value.
    """
    text = text.strip()
    if not text:
        return None
    if name == "stop":
        return coerce(name, [part.strip() for part in text.split(",") if part.strip()])
    return coerce(name, text)


def field_text(value: Any) -> str:
    """A parameter's value as the form shows it."""
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return "" if value is None else str(value)


class ParameterValidator(Validator):
    """Checks a form field with the parameter rules; the failure carries their message."""

    def __init__(self, parameter: str) -> None:
        super().__init__()
        self.parameter = parameter

    def validate(self, value: str) -> ValidationResult:
        try:
            parse_field(self.parameter, value)
        except ParameterError as e:
            return self.failure(str(e))
        return self.success()


class SettingsScreen(ModalScreen[tuple[str, dict[str, Any]] | None]):
    """The chat's system prompt and parameters; dismisses `(system, options)` on Save, None on Cancel.

    Options the form does not offer are kept as they were; an empty field unsets its parameter, and
    shows as its placeholder the value in effect then (`defaults`: the model's, else the server's).
    """

    DEFAULT_CSS = (
        panel_css("SettingsScreen", 90)
        + """
    SettingsScreen #system { height: 6; margin-bottom: 1; }
    SettingsScreen #form { grid-size: 2; grid-columns: 1fr 1fr; grid-rows: auto; height: auto; }
    SettingsScreen .field { height: auto; }
    SettingsScreen .field Horizontal { height: auto; }
    SettingsScreen .field Label { width: 15; padding: 1 1 0 0; }
    SettingsScreen .field Input { width: 1fr; }
    SettingsScreen .error { padding-left: 15; }
    """
    )
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", id="settings.save", priority=True),
        Binding("escape", "close", "Cancel", id="settings.close"),
    ]
    #: Typing goes to the system prompt, not to the scrolling panel around the form.
    AUTO_FOCUS = "#system"

    def __init__(self, system: str, options: dict[str, Any], *, defaults: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.system = system
        self.options = dict(options)
        self.defaults = dict(defaults or {})

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="panel"):
            yield Label("Chat settings", classes="title")
            yield Label("System prompt")
            yield TextArea(self.system, id="system")
            with Grid(id="form"):
                for name in FORM_PARAMETERS:
                    yield self._field(name)
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Save", variant="primary", id="save")
        yield Footer()

    def _field(self, name: str) -> Vertical:
        """One cell of the form: the parameter's name, its input, and its message line (hidden until needed)."""
        field = Input(
            field_text(self.options.get(name)),
            placeholder=self._placeholder(name),
            tooltip=PARAMETERS[name].meaning,
            validators=[ParameterValidator(name)],
            valid_empty=True,
            id=f"opt-{name}",
        )
        error = Static("", classes="error", id=f"error-{name}")
        error.display = False
        return Vertical(Horizontal(Label(name), field), error, classes="field")

    def _placeholder(self, name: str) -> str:
        """What an empty field means: the default in effect, else that the parameter is unset."""
        default = field_text(self.defaults.get(name))
        if default:
            return f"{default} (default)"
        return "a, b, …" if name == "stop" else "unset"

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        """Show or clear the field's message as the value is typed."""
        event.stop()
        result = event.validation_result
        self._mark(event.input, result.failure_descriptions if result else [])

    def _mark(self, field: Input, problems: list[str]) -> None:
        name = (field.id or "").removeprefix("opt-")
        error = self.query_one(f"#error-{name}", Static)
        error.update(Text("; ".join(problems)))
        error.display = bool(problems)
        field.set_class(bool(problems), "-invalid")

    def form_values(self) -> dict[str, Any] | None:
        """The form's parameters that are set, or None (with the bad fields marked) when one is invalid."""
        values: dict[str, Any] = {}
        invalid: list[Input] = []
        for name in FORM_PARAMETERS:
            field = self.query_one(f"#opt-{name}", Input)
            try:
                value = parse_field(name, field.value)
            except ParameterError as e:
                self._mark(field, [str(e)])
                invalid.append(field)
                continue
            if value is not None:
                values[name] = value
        if invalid:
            invalid[0].focus()
            return None
        return values

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "save":
            self.action_save()
        else:
            self.action_close()

    def action_save(self) -> None:
        values = self.form_values()
        if values is None:
            return
        kept = {name: value for name, value in self.options.items() if name not in FORM_PARAMETERS}
        self.dismiss((self.query_one("#system", TextArea).text.strip(), {**kept, **values}))

    def action_close(self) -> None:
        self.dismiss(None)
