"""The default experiment config: the library's schema (`research.schema`), every field with its default.

Field names are a public contract (users' scripts override them by name): extend, never rename. They are declared
in research/schema.py (and the model's in research/model/config.py); other config files start from this one and
change a few fields.
"""

from research import schema


def get_config():
  return schema.get_config()
