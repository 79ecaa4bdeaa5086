"""A generate stage whose system prompt is a template file named by a param (a path anywhere, so a
test can edit it): Stage.template_files returns it, so its text is part of the stage's fingerprint."""

from pathlib import Path

from alignfactory.stages.synthesize.generate import Generate


class TemplatedGenerate(Generate):
    class Params(Generate.Params):
        system_template: str  # path of a text file: the system prompt

    @classmethod
    def template_files(cls, params):
        return [Path(params.system_template)]

    def build_messages(self, row):
        system = Path(self.params.system_template).read_text("utf-8").strip()
        return [{"role": "system", "content": system}] + super().build_messages(row)
