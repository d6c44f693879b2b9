"""One module per tab. Each has `build(shared)`, called inside its `gr.Tab` to create components
(registering the ones other tabs need on `shared`), and `wire(shared, demo)`, called once every tab
is built to attach events (so a tab may send values to a component of a later tab)."""
