// The status page. Everything it shows comes from the status function's JSON
// API, and it builds the DOM with createElement and textContent only:
// instance data (item names are user input) is never parsed as HTML.
'use strict';

const REFRESH_MS = 1500;
// A partition's instance id is its fan-out's, then :p and its number,
// whatever the fan-out.
const isPartition = (st) => /:p\d+$/.test(st.instanceId || '');
const FINISHED = new Set(['Completed', 'Failed', 'Terminated', 'Canceled']);
const STATUSES = new Set(['Pending', 'Running', 'Completed', 'ContinuedAsNew', 'Failed', 'Canceled', 'Terminated', 'Suspended']);

const $ = (id) => document.getElementById(id);

// Behind the Functions host the page is opened with a function key, ?code=…,
// which every call and link must carry as well.
const pageParams = new URLSearchParams(location.search);
const code = pageParams.get('code');
const instanceId = document.body.dataset.instanceId || '';
// Instances a page in the list: ?top=N, as the API has it.
const pageSize = Math.min(Math.max(Number.parseInt(pageParams.get('top'), 10) || 20, 1), 1000);
// The status function's URL, found from where this page is, since the route
// prefix is configurable: the list is served at it, an instance one segment
// below.
const here = location.pathname.replace(/\/+$/, '');
const statusBase = instanceId ? here.slice(0, here.lastIndexOf('/')) : here;

function withCode(path, query = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, v);
  }
  if (code !== null) url.searchParams.set('code', code);
  return url.pathname + url.search;
}
// Partition ids hold a colon, which is fine to leave as it is in a path.
const instancePath = (id) => statusBase + '/' + encodeURIComponent(id).replace(/%3A/gi, ':');
const instanceHref = (id) => withCode(instancePath(id));
const listHref = () => withCode(statusBase);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The server's clock, as far as its Date header tells, so that the elapsed
// time of a running instance does not depend on this machine's clock.
let clockOffset = 0;

async function api(method, path, query = {}, headers = {}) {
  let res;
  try {
    res = await fetch(withCode(path, query), {
      method,
      headers: { Accept: 'application/json', ...headers },
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, 'The handler cannot be reached (' + e.message + '); trying again.');
  }
  let body = null;
  try {
    body = await res.json();
  } catch {
    // Not JSON: the status line below says what happened.
  }
  if (!res.ok) {
    const message = body && typeof body.error === 'string' ? body.error : `HTTP ${res.status} ${res.statusText}`.trim();
    throw new ApiError(res.status, message);
  }
  const date = Date.parse(res.headers.get('Date') || '');
  // The header has whole seconds only: correct just the clearly wrong clocks.
  if (!Number.isNaN(date)) clockOffset = Math.abs(date - Date.now()) > 3000 ? date - Date.now() : 0;
  return { body, headers: res.headers };
}

// --- Formatting -----------------------------------------------------------

const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
const fmtNumber = (n) => (typeof n === 'number' && Number.isFinite(n) ? numberFormat.format(n) : '–');

function fmtDuration(ms) {
  if (!Number.isFinite(ms) || ms < 0) return '–';
  const s = ms / 1000;
  if (s < 10) return numberFormat.format(Math.round(s * 10) / 10) + ' s';
  if (s < 60) return Math.round(s) + ' s';
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

const parseTime = (iso) => (typeof iso === 'string' && iso ? Date.parse(iso) : NaN);

function timeElement(iso) {
  const t = document.createElement('time');
  const ms = parseTime(iso);
  if (Number.isNaN(ms)) {
    t.textContent = '–';
    return t;
  }
  const d = new Date(ms);
  t.dateTime = d.toISOString();
  t.title = d.toISOString();
  const today = d.toDateString() === new Date().toDateString();
  t.textContent = today
    ? d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' })
    : d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
  return t;
}

// --- What an instance's status says ---------------------------------------

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

// readable turns a field name (total_value, averageValue) into a label
// (Total value, Average value).
function readable(key) {
  const words = key.replace(/([a-z0-9])([A-Z])/g, '$1 $2').replace(/[_\-.]+/g, ' ').trim().toLowerCase();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

// A list or an object in a summary shows its first LIST_ITEMS entries,
// then how many more it has: enough to recognise it, short enough to read
// as a fact. (The API has the whole of it.)
const LIST_ITEMS = 10;
// A fact longer than this many characters takes a row of its own.
const WIDE_FACT = 24;

// factValue shows a summary field's value: numbers formatted, yes or no,
// text as it is, an object as "key: value, …", a list as its entries
// joined, objects in it by "; ". Values nested deeper show as {key: value}
// and [a, b].
function factValue(v) {
  if (Array.isArray(v)) {
    if (v.length === 0) return 'none';
    const item = (x) => (isObject(x) ? entriesText(Object.entries(x), keyValue, ', ') || '{}' : nestedValue(x));
    return entriesText(v, item, v.some(isObject) ? '; ' : ', ');
  }
  if (isObject(v)) return entriesText(Object.entries(v), keyValue, ', ') || '–';
  return nestedValue(v);
}

function nestedValue(v) {
  switch (typeof v) {
    case 'number':
      return fmtNumber(v);
    case 'boolean':
      return v ? 'yes' : 'no';
    case 'string':
      return v;
  }
  if (Array.isArray(v)) return '[' + entriesText(v, nestedValue, ', ') + ']';
  if (isObject(v)) return '{' + entriesText(Object.entries(v), keyValue, ', ') + '}';
  return '–'; // null
}

const keyValue = ([k, v]) => `${k}: ${nestedValue(v)}`;

// entriesText shows the first LIST_ITEMS entries, each with show, joined
// by sep, and how many more there are.
function entriesText(entries, show, sep) {
  const shown = entries.slice(0, LIST_ITEMS).map(show);
  if (entries.length > LIST_ITEMS) shown.push(`and ${fmtNumber(entries.length - LIST_ITEMS)} more`);
  return shown.join(sep);
}

// progressOf is {completed, total}, either null when not known yet.
function progressOf(st) {
  const cs = isObject(st.customStatus) ? st.customStatus : {};
  let completed = Number.isFinite(cs.completed) ? cs.completed : null;
  let total = Number.isFinite(cs.total) ? cs.total : null;
  if (st.runtimeStatus === 'Completed') completed = total;
  return { completed, total };
}

// processedOf is how many items of a completed fan-out succeeded: its
// items (progress) less those the engine recorded as failed; null if
// either is unknown.
function processedOf(st) {
  const { total } = progressOf(st);
  const failed = isObject(st.output) ? st.output.total_items_failed : undefined;
  return total !== null && Number.isFinite(failed) ? Math.max(total - failed, 0) : null;
}

// timing is how long the instance has run (until its last update once it
// has finished) and how many items a second it got through.
function timing(st) {
  const created = parseTime(st.createdTime);
  const end = FINISHED.has(st.runtimeStatus) ? parseTime(st.lastUpdatedTime) : Date.now() + clockOffset;
  const elapsed = Math.max(0, end - created);
  const { completed } = progressOf(st);
  // Under half a second, a rate would be mostly noise.
  const rate = completed !== null && elapsed >= 500 ? completed / (elapsed / 1000) : null;
  return { elapsed: Number.isNaN(created) ? NaN : elapsed, rate };
}

function badge(status) {
  const b = document.createElement('span');
  const known = STATUSES.has(status);
  b.className = 'badge s-' + (known ? status.toLowerCase() : 'pending');
  b.textContent = known ? status : String(status || 'Unknown');
  return b;
}

function progressElement(st, label) {
  const p = document.createElement('progress');
  const { completed, total } = progressOf(st);
  p.className = 's-' + String(st.runtimeStatus || '').toLowerCase();
  if (label) p.setAttribute('aria-label', label);
  if (total !== null) {
    p.max = Math.max(total, 1);
    p.value = Math.min(completed || 0, p.max);
  } // else indeterminate: no value
  return p;
}

function progressText(st) {
  const { completed, total } = progressOf(st);
  if (total === null) return FINISHED.has(st.runtimeStatus) ? 'No progress recorded' : 'Starting…';
  const pct = total > 0 ? Math.floor((completed / total) * 100) : 100;
  return `${fmtNumber(completed)} of ${fmtNumber(total)} items · ${pct} %`;
}

// resultText is one line about a finished instance, for the list.
function resultText(st) {
  const out = st.output;
  switch (st.runtimeStatus) {
    case 'Completed': {
      // Every fan-out's output has the engine's count of failed items;
      // the progress has how many items there were.
      const failed = isObject(out) && Number.isFinite(out.total_items_failed) ? out.total_items_failed : null;
      const processed = processedOf(st);
      if (failed === null) return 'Completed';
      if (processed === null) return failed ? `${fmtNumber(failed)} failed` : 'Completed';
      return failed ? `${fmtNumber(processed)} processed, ${fmtNumber(failed)} failed` : `${fmtNumber(processed)} processed`;
    }
    case 'Failed':
      return typeof out === 'string' ? out : 'Failed';
    case 'Terminated':
      return typeof out === 'string' && out ? 'Reason: ' + out : 'Terminated';
    default:
      return '';
  }
}

function cell(content, className) {
  const td = document.createElement('td');
  if (className) td.className = className;
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  return td;
}

function link(text, href) {
  const a = document.createElement('a');
  a.href = href;
  a.textContent = text;
  return a;
}

function progressCell(st, label) {
  const td = cell('', 'cell-progress');
  const text = document.createElement('span');
  text.textContent = progressText(st);
  td.append(progressElement(st, label), text);
  return td;
}

// statusCells are the cells the list and the partitions tables both show
// for an instance: status, progress, items/s and elapsed time.
function statusCells(st, label) {
  const { elapsed, rate } = timing(st);
  return [
    cell(badge(st.runtimeStatus)),
    progressCell(st, label),
    cell(fmtNumber(rate), 'num'),
    cell(fmtDuration(elapsed), 'num'),
  ];
}

// replaceRows swaps a table body's rows, keeping keyboard focus on the same
// link if it was on one: the tables are redrawn every refresh. Each cell is
// labelled with its column's heading, which narrow screens show beside it
// (status.css).
function replaceRows(tbody, rows) {
  const focused = tbody.contains(document.activeElement) ? document.activeElement.getAttribute('href') : null;
  const heads = [...tbody.closest('table').tHead.rows[0].cells].map((th) => th.textContent);
  for (const tr of rows) {
    [...tr.cells].forEach((td, i) => {
      if (td.colSpan === 1) td.dataset.label = heads[i] ?? '';
    });
  }
  tbody.replaceChildren(...rows);
  if (focused) {
    const again = [...tbody.querySelectorAll('a')].find((a) => a.getAttribute('href') === focused);
    if (again) again.focus();
  }
}

function emptyRow(columns, text) {
  const tr = document.createElement('tr');
  const td = cell(text, 'empty');
  td.colSpan = columns;
  tr.append(td);
  return tr;
}

// --- Messages -------------------------------------------------------------

// showError shows why the page cannot show what it should; the next
// refresh that works clears it. Errors of actions the user took go to
// another place, #action-error, and stay until the next action.
function showError(message, where = 'notice') {
  const n = $(where);
  // Set only on a change, so that a screen reader hears it once.
  if (n.textContent !== message) n.textContent = message;
  n.hidden = false;
}

function clearError(where = 'notice') {
  $(where).hidden = true;
  $(where).textContent = '';
}

let flashTimer = 0;
function flash(message) {
  $('flash').textContent = message;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => { $('flash').textContent = ''; }, 6000);
}

// --- Refreshing -----------------------------------------------------------

// poller runs step now and then every REFRESH_MS for as long as step says
// to go on, one step at a time, and not while the tab is hidden.
function poller(step) {
  let timer = 0;
  let busy = false;
  let again = false;
  let active = true;
  async function run() {
    clearTimeout(timer);
    timer = 0;
    if (busy) {
      again = true;
      return;
    }
    if (document.hidden) return; // visibilitychange starts it again
    busy = true;
    try {
      active = await step();
    } catch (e) {
      showError(e.message);
    } finally {
      busy = false;
    }
    if (again) {
      again = false;
      run();
    } else if (active) {
      timer = setTimeout(run, REFRESH_MS);
    }
  }
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && active && !busy && !timer) run();
  });
  return {
    run() {
      active = true;
      run();
    },
  };
}

// --- The list of instances -------------------------------------------------

function listView() {
  $('list-view').hidden = false;
  // The continuation token of each page seen so far, to go back and forth.
  const state = { tokens: [null], page: 0 };
  const body = $('list-body');
  const poll = poller(refresh);

  async function refresh() {
    const query = {
      top: pageSize,
      runtimeStatus: $('filter-status').value,
      showPartitions: $('filter-partitions').checked ? 'true' : '',
    };
    const token = state.tokens[state.page];
    let res;
    try {
      res = await api('GET', statusBase, query, token ? { 'x-ms-continuation-token': token } : {});
    } catch (e) {
      if (e.status === 501) {
        // This task hub cannot list instances; that will not change.
        $('list-wrap').hidden = true;
        $('list-message').textContent = e.message + ' Open an instance by its id instead.';
        clearError();
        return false;
      }
      showError(e.message);
      return true;
    }
    clearError();
    if (!Array.isArray(res.body)) {
      showError('The list of instances is not a JSON array.');
      return true;
    }
    const next = res.headers.get('x-ms-continuation-token');
    state.tokens.length = state.page + 1;
    if (next) state.tokens.push(next);
    render(res.body);
    return true;
  }

  function render(instances) {
    const rows = instances.filter(isObject).map((st) => {
      const tr = document.createElement('tr');
      const id = String(st.instanceId ?? '');
      tr.append(
        cell(link(id, instanceHref(id)), 'id'),
        ...statusCells(st, 'Progress of ' + id),
        cell(timeElement(st.createdTime), 'when'),
        cell(resultText(st), 'result'),
      );
      return tr;
    });
    replaceRows(body, rows.length ? rows : [emptyRow(7, state.page ? 'No more instances.' : 'No instances match.')]);
    $('list-wrap').hidden = false;
    const first = state.page * pageSize + 1;
    $('list-message').textContent = rows.length ? `Instances ${first} to ${first + rows.length - 1}, newest first.` : '';
    $('page-label').textContent = 'Page ' + (state.page + 1);
    $('prev').disabled = state.page === 0;
    $('next').disabled = state.tokens.length <= state.page + 1;
  }

  const fromFirstPage = () => {
    state.tokens = [null];
    state.page = 0;
    poll.run();
  };
  $('filter-status').addEventListener('change', fromFirstPage);
  $('filter-partitions').addEventListener('change', fromFirstPage);
  $('prev').addEventListener('click', () => {
    if (state.page > 0) state.page--;
    poll.run();
  });
  $('next').addEventListener('click', () => {
    if (state.tokens.length > state.page + 1) state.page++;
    poll.run();
  });
  $('open-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = $('open-id').value.trim();
    if (id) location.assign(instanceHref(id));
  });
  poll.run();
}

// --- One instance ---------------------------------------------------------

const ACTIONS = {
  suspend: {
    title: 'Suspend this instance?',
    text: 'No more items start. Items already running finish, and their results wait until the instance is resumed.',
    ok: 'Suspend', reason: true, when: (s) => s === 'Running' || s === 'Pending',
    done: 'Suspend requested.',
  },
  resume: {
    title: 'Resume this instance?',
    text: 'The run goes on from where it stopped.',
    ok: 'Resume', reason: true, when: (s) => s === 'Suspended',
    done: 'Resume requested.',
  },
  terminate: {
    title: 'Terminate this instance?',
    text: 'The instance and its partitions stop and end as Terminated, with the reason as their output. This cannot be undone.',
    ok: 'Terminate', reason: true, danger: true, when: (s) => s === 'Running' || s === 'Pending' || s === 'Suspended',
    done: 'Terminate requested.',
  },
  restart: {
    title: 'Restart this instance?',
    text: 'A new instance starts with the same work items; this one stays as it is.',
    ok: 'Restart', when: () => true,
  },
  purge: {
    title: 'Purge this instance?',
    text: 'The instance and its partitions are deleted, with their history and results. This cannot be undone.',
    ok: 'Purge', danger: true, when: (s) => FINISHED.has(s),
  },
};

function instanceView() {
  $('instance-view').hidden = false;
  let listUnsupported = ''; // why the partitions cannot be listed
  let lastStatus = '';
  const poll = poller(refresh);

  async function refresh() {
    let st;
    try {
      st = (await api('GET', instancePath(instanceId), { showInput: 'false' })).body;
    } catch (e) {
      showError(e.message);
      if (e.status === 404) {
        // Gone, or never there: nothing more to wait for.
        $('details').hidden = true;
        return false;
      }
      return true;
    }
    clearError();
    if (!isObject(st)) {
      showError('The instance status is not a JSON object.');
      return true;
    }
    $('details').hidden = false;
    render(st);
    if (!isPartition(st)) await refreshPartitions(st);
    // A finished instance does not change: this was the last look.
    return !FINISHED.has(st.runtimeStatus);
  }

  function render(st) {
    const status = String(st.runtimeStatus || '');
    if (status !== lastStatus) {
      $('status').replaceChildren(badge(status));
      lastStatus = status;
    }
    const out = isObject(st.output) ? st.output : null;
    const outcome = status === 'Completed' && out && out.success === false
      ? `${fmtNumber(out.total_items_failed)} ${out.total_items_failed === 1 ? 'item' : 'items'} failed`
      : '';
    if ($('outcome').textContent !== outcome) {
      $('outcome').replaceChildren();
      if (outcome) {
        const b = document.createElement('span');
        b.className = 'badge s-warning';
        b.textContent = outcome;
        $('outcome').append(b);
      }
    }
    $('orchestration').textContent = st.name ? 'Orchestration ' + st.name : '';

    const bar = progressElement(st);
    const p = $('progress');
    p.className = bar.className;
    if (bar.hasAttribute('value')) {
      p.max = bar.max;
      p.value = bar.value;
    } else {
      p.removeAttribute('value');
    }
    $('progress-text').textContent = progressText(st);

    const { elapsed, rate } = timing(st);
    $('rate').textContent = fmtNumber(rate); // '–' until there is a rate
    $('elapsed').textContent = fmtDuration(elapsed);
    $('created').replaceChildren(timeElement(st.createdTime));
    $('updated').replaceChildren(timeElement(st.lastUpdatedTime));

    const partition = isPartition(st);
    let any = false;
    for (const button of $('actions').querySelectorAll('button')) {
      // A partition is managed through its fan-out.
      button.hidden = partition || !ACTIONS[button.dataset.action].when(status);
      any ||= !button.hidden;
    }
    $('actions').hidden = !any;
    renderResult(st, status, out);
    document.title = `${status || 'Instance'} · ${instanceId} · Fan-out/fan-in`;
  }

  // summaryFacts lists a completed fan-out's summary as [label, value,
  // tone, wide]: the counts first, processed (its items less the failed)
  // and failed (every fan-out's output has that count), then every other
  // field in its order, under its own name made readable; wide for a list
  // or an object. Left out are the engine's fields the page shows apart,
  // and the sample's own count and list of processed items: the first fact
  // says as much, and the list is as long as the fan-out.
  function summaryFacts(st, out) {
    const facts = [];
    const processed = processedOf(st);
    if (processed !== null) facts.push(['Processed', fmtNumber(processed), 'good']);
    facts.push(['Failed', fmtNumber(out.total_items_failed), out.total_items_failed ? 'bad' : '']);
    const shown = new Set(['total_items_failed', 'failed_items', 'failed_items_omitted', 'success', 'partitions',
      'total_items_processed', 'processed_items', 'processed_items_omitted']);
    for (const [key, value] of Object.entries(out)) {
      if (!shown.has(key)) facts.push([readable(key), factValue(value), '', value !== null && typeof value === 'object']);
    }
    if (out.partitions) facts.push(['Partitions', fmtNumber(out.partitions)]);
    return facts;
  }

  function renderResult(st, status, out) {
    const summary = $('summary');
    const failure = $('failure');
    const facts = [];
    failure.hidden = true;
    if (status === 'Completed' && isObject(out)) {
      facts.push(...summaryFacts(st, out));
    } else if (status === 'Failed' || status === 'Terminated') {
      const text = typeof st.output === 'string' ? st.output : st.output === null ? '' : JSON.stringify(st.output);
      const head = document.createElement('strong');
      head.textContent = status === 'Failed' ? 'The orchestration failed' : 'Terminated';
      failure.replaceChildren(head, text || (status === 'Failed' ? 'No message.' : 'No reason given.'));
      failure.hidden = false;
    }
    summary.replaceChildren(...facts.map(([term, value, tone, wide]) => {
      const div = document.createElement('div');
      if (tone) div.className = tone;
      const dt = document.createElement('dt');
      dt.textContent = term;
      const dd = document.createElement('dd');
      dd.textContent = value;
      // A list, an object or a long text takes a whole row, in smaller type.
      if (wide || value.length > WIDE_FACT) {
        div.classList.add('wide');
        dd.className = 'small';
      }
      div.append(dt, dd);
      return div;
    }));
    summary.hidden = facts.length === 0;
    $('result').hidden = facts.length === 0 && failure.hidden;

    const failed = out && Array.isArray(out.failed_items) ? out.failed_items.filter(isObject) : [];
    const omitted = out && out.failed_items_omitted ? out.failed_items_omitted : 0;
    $('failed').hidden = failed.length === 0 && !omitted;
    $('failed-note').textContent = omitted
      ? `${fmtNumber(omitted)} more failed ${omitted === 1 ? 'item is' : 'items are'} not listed.`
      : '';
    replaceRows($('failed-body'), failed.map((f) => {
      const tr = document.createElement('tr');
      tr.append(
        cell(fmtNumber(f.index), 'num'),
        cell(typeof f.item === 'string' ? f.item : JSON.stringify(f.item ?? ''), 'item'),
        cell(String(f.error ?? ''), 'err'),
        cell(fmtNumber(f.attempts), 'num'),
      );
      return tr;
    }));
  }

  // refreshPartitions lists the instance's partitions, <id>:p0, :p1, …, if
  // it has any.
  async function refreshPartitions(st) {
    const section = $('partitions');
    const partitioned = isObject(st.output) && st.output.partitions > 0;
    const cannotList = (message) => {
      // Worth saying only when there are partitions to list.
      section.hidden = !partitioned;
      $('partitions-message').textContent = 'Partitions cannot be listed: ' + message;
      $('partitions-body').replaceChildren();
      $('partitions-wrap').hidden = true;
    };
    if (listUnsupported) {
      cannotList(listUnsupported);
      return;
    }
    let all = [];
    try {
      let token = null;
      // At most ten pages of 100: a fan-out of 100,000 items has 100.
      for (let page = 0; page < 10; page++) {
        const res = await api('GET', statusBase,
          { showPartitions: 'true', instanceIdPrefix: instanceId + ':p', top: 100 },
          token ? { 'x-ms-continuation-token': token } : {});
        if (!Array.isArray(res.body)) throw new ApiError(0, 'The list of partitions is not a JSON array.');
        all = all.concat(res.body.filter(isObject));
        token = res.headers.get('x-ms-continuation-token');
        if (!token) break;
      }
    } catch (e) {
      // A task hub that cannot list instances (501) will not learn to.
      if (e.status === 501) listUnsupported = e.message;
      cannotList(e.message);
      return;
    }
    $('partitions-wrap').hidden = false;
    const number = (p) => Number(String(p.instanceId).slice(instanceId.length + 2));
    all = all.filter((p) => /^\d+$/.test(String(p.instanceId).slice(instanceId.length + 2)))
      .sort((a, b) => number(a) - number(b));
    section.hidden = all.length === 0;
    $('partitions-message').textContent = all.length
      ? `${all.length} ${all.length === 1 ? 'partition' : 'partitions'}, ${all.filter((p) => FINISHED.has(p.runtimeStatus)).length} finished.`
      : '';
    replaceRows($('partitions-body'), all.map((p) => {
      const tr = document.createElement('tr');
      tr.append(
        cell(link('p' + number(p), instanceHref(p.instanceId)), 'id'),
        ...statusCells(p, 'Progress of partition ' + number(p)),
      );
      return tr;
    }));
  }

  // Management: each action asks first, in a modal dialog.
  const dialog = $('confirm');
  let pending = '';
  for (const button of $('actions').querySelectorAll('button')) {
    button.addEventListener('click', () => {
      const a = ACTIONS[button.dataset.action];
      pending = button.dataset.action;
      $('confirm-title').textContent = a.title;
      $('confirm-text').textContent = a.text;
      $('reason-field').hidden = !a.reason;
      $('reason').value = '';
      $('confirm-ok').textContent = a.ok;
      $('confirm-ok').className = a.danger ? 'danger' : 'primary';
      dialog.showModal();
      // Focus the reason, or Cancel rather than the action itself.
      (a.reason ? $('reason') : $('confirm-cancel')).focus();
    });
  }
  $('confirm-cancel').addEventListener('click', () => dialog.close());
  $('confirm-form').addEventListener('submit', (e) => {
    e.preventDefault(); // the page's CSP allows no form submission
    const action = pending;
    const reason = $('reason').value.trim();
    dialog.close();
    manage(action, reason);
  });

  async function manage(action, reason) {
    const a = ACTIONS[action];
    const buttons = $('actions').querySelectorAll('button');
    buttons.forEach((b) => { b.disabled = true; });
    clearError('action-error');
    try {
      if (action === 'purge') {
        await api('DELETE', instancePath(instanceId));
        location.assign(listHref());
        return;
      }
      const res = await api('POST', instancePath(instanceId) + '/' + action, a.reason ? { reason } : {});
      if (action === 'restart') {
        location.assign(instanceHref(res.body.id));
        return;
      }
      flash(a.done);
      poll.run();
    } catch (e) {
      showError(`${a.ok} failed: ${e.message}`, 'action-error');
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  const parent = instanceId.match(/^(.*):p\d+$/);
  if (parent) {
    $('parent-link').append(link('Partition of ' + parent[1], instanceHref(parent[1])));
  }
  poll.run();
}

$('home').href = listHref();
$('back').href = listHref();
if (instanceId) instanceView();
else listView();
