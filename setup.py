"""The one compiled part: the bulk JSON path's byte scan (kafkaconsole/engine/events.py).

Optional: where it cannot be compiled (no C compiler), the install goes on without it and the
engine decodes the same events the same way, value by value. Everything else is in
pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kafkaconsole.engine._jsonscan",
            ["kafkaconsole/engine/_jsonscan.c"],
            optional=True,
        )
    ]
)
