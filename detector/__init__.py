"""canwatch's detector, laid out as its pipeline (docs/architecture.md):

``transport`` (Kafka records <-> frames) -> ``features`` (frames -> rows) ->
``model`` (rows -> calibrated evidence) -> ``incidents`` (evidence -> incidents),
run by the ``service``; ``evaluation`` runs the same scoring offline; ``demo`` and
``cli`` sit on top. ``core`` holds what all of them share. The import directions
are import-linter contracts in pyproject.toml.
"""
