"""The SSD application: the `ssd` command, the `ssd run` pipeline, its report and the built-in prompt data.

It sits on the top floor: it uses the service, trainer, evaluation and diagnostics packages (and the
client library beneath them), and nothing imports it.
"""
