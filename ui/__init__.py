"""The Gradio UI. `layout.build_demo()` wires components; `services` holds the callbacks' logic
(no Gradio there), calling `jobs` to submit and `db.queries` to read."""
