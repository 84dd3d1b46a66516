// Sortable tables for the upgradebench leaderboard (no dependencies, works from file://).
// A table with class "sortable" sorts when a header button is clicked; numeric columns
// (th data-type="num") sort by each cell's data-value. A table may name its initial order with
// data-sort-column / data-sort-order. The script only reorders existing rows; it never writes HTML.
(function () {
  "use strict";

  function key(row, index, numeric) {
    var cell = row.cells[index];
    var raw = cell ? (cell.getAttribute("data-value") !== null ? cell.getAttribute("data-value") : cell.textContent) : "";
    if (!numeric) {
      return raw.trim().toLowerCase();
    }
    var number = parseFloat(raw);
    return isNaN(number) ? -Infinity : number;
  }

  function sortTable(table, index, descending) {
    var headers = table.tHead.rows[0].cells;
    var numeric = headers[index].getAttribute("data-type") === "num";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (row, position) {
      return { row: row, key: key(row, index, numeric), position: position };
    });
    rows.sort(function (a, b) {
      var order = a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
      return (descending ? -order : order) || a.position - b.position;
    });
    rows.forEach(function (item) { body.appendChild(item.row); });
    Array.prototype.forEach.call(headers, function (th) { th.removeAttribute("aria-sort"); });
    headers[index].setAttribute("aria-sort", descending ? "descending" : "ascending");
    table.setAttribute("data-sorted", index + ":" + (descending ? "desc" : "asc"));
  }

  function init(table) {
    var headers = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(headers, function (th, index) {
      var button = th.querySelector("button");
      if (!button) {
        return;
      }
      button.addEventListener("click", function () {
        // numbers start high-to-low, text A-to-Z; a second click reverses
        var descending = th.getAttribute("aria-sort") ? th.getAttribute("aria-sort") === "ascending"
                                                      : th.getAttribute("data-type") === "num";
        sortTable(table, index, descending);
      });
    });
    var column = table.getAttribute("data-sort-column");
    if (column !== null) {
      sortTable(table, parseInt(column, 10), table.getAttribute("data-sort-order") !== "asc");
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), init);
  });
})();
