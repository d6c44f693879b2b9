// Column headers of the leaderboard explain themselves on hover: `title` attributes from the hints
// the server puts in window.PRUNEBOARD_HEADER_HINTS (ui/board.py HEADER_HINTS). Gradio re-renders
// the table on every refresh, so the titles are set again whenever the table changes.
(function () {
  function label(th) {
    const text = (th.innerText || "").trim();
    const hints = window.PRUNEBOARD_HEADER_HINTS || {};
    if (hints[text]) return hints[text];
    if (text.endsWith(" avg")) return hints[" avg"];
    return null;
  }
  function apply() {
    document.querySelectorAll("#pb-board th, #pb-board [role=columnheader]").forEach(function (th) {
      const hint = label(th);
      if (hint && th.getAttribute("title") !== hint) th.setAttribute("title", hint);
    });
  }
  new MutationObserver(apply).observe(document.documentElement, {childList: true, subtree: true});
})();
