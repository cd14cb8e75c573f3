/* Optional accelerator for the TFTP loop: the ACK -> DATA step in C.
 *
 * Plowshare's TFTP server (appliance/servers/tftp.py) is Python; this module
 * only moves the steady state of a transfer out of the interpreter.  It holds
 * no policy: every decision (accept, refuse, options, when a transfer ends,
 * retransmission, events, logging) stays in Python.  Without it the server
 * runs the same code in pure Python (tftp_session.Window); the test suite runs
 * both (tests/protocol/test_tftp_pump.py).
 *
 * Why: with 20-100 lock-step clients on a small machine the server's CPU per
 * packet decides the aggregate, and the interpreter's share of it (~1.5-3 us
 * of ~11 us per DATA packet) is what separates a Python loop from dnsmasq
 * (docs/bench-tftp.md).  The loop also runs without the GIL here, so a busy
 * TFTP transfer no longer competes with the DHCP and HTTP threads for it.
 *
 * Types:
 *   Window  the hot state of one transfer: block numbers as absolute
 *           sequence numbers (base, sent, last), the deadline, the source
 *           bytes (a buffer: a read-only mmap or bytes).  tftp_session.Session
 *           subclasses it, so Python and C read and write the same fields.
 *   Pump    a table fd -> Window over the server's epoll set.
 *           run(until, maxevents, spin, spin_max, nap) waits on the epoll set
 *           with the GIL released and handles every in-window ACK of a
 *           started transfer with a source buffer (sendmsg of header + slice,
 *           exactly what Session._send_block does); it returns to Python at
 *           `until` or as soon as something needs Python, as a list of
 *           (fd, kind, data, window or None):
 *             READY     fd is readable and not ours: Python reads it
 *             DATAGRAM  a datagram C read but does not handle (not an ACK,
 *                       or the final ACK): data is its bytes
 *             REARM     the deadline moved earlier than the armed timer
 *             FAULT     sendmsg failed with EFAULT (file truncated in place)
 *
 * Contract: every Window field and the Pump belong to the loop thread; run()
 * is not re-entrant and the table may only change between runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <string.h>
#include <time.h>
#include <sys/prctl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define OP_DATA 3        /* RFC 1350 section 5 */
#define OP_ACK 4         /* RFC 1350 section 5 */
#define RECV_MAX 65536   /* bigger than any legal TFTP datagram */

enum { K_READY = 0, K_DATAGRAM = 1, K_REARM = 2, K_FAULT = 3 };
enum { ARMED_NONE = 0, ARMED_SPIN = 1, ARMED_NAP = 2 };
#define TIMER_SLACK_NS 1000  /* the loop thread's naps: ~nap, not nap + 50 us */

#include "_tftp_pump_window.h"

/* ------------------------------------------------------------------ Pump */

typedef struct { int fd, kind; Py_ssize_t len; char *data; PyObject *win; } Outcome;

typedef struct {
    PyObject_HEAD
    int epfd, running;
    PyObject **table;   /* indexed by fd; strong references */
    Py_ssize_t cap, count;
    unsigned char *rbuf;
    struct epoll_event *evs;
    Outcome *out;
    int nevs, nout;
    int armed, misses, slack_set;
    int miss_limit;      /* tftp_poll.SPIN_MISS_LIMIT, given to __init__ */
    double backoff;      /* tftp_poll.SPIN_BACKOFF, seconds */
    double spin_off_until;
} Pump;

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  /* the clock of time.monotonic() */
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int not_running(Pump *p) {
    if (p->running) {
        PyErr_SetString(PyExc_RuntimeError, "Pump is running");
        return 0;
    }
    return 1;
}

static int pump_init(Pump *p, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"epoll_fd", "spin_miss_limit", "spin_backoff", NULL};
    p->miss_limit = 16;
    p->backoff = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|id", kwlist, &p->epfd, &p->miss_limit,
                                     &p->backoff) || !not_running(p))
        return -1;
    if (p->rbuf == NULL)  /* (__init__ may be called again) */
        p->rbuf = PyMem_Malloc(RECV_MAX);
    if (p->rbuf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* GC: the table holds sessions, which hold the server, which holds the pump. */
static int pump_traverse(Pump *p, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < p->cap; i++)
        Py_VISIT(p->table[i]);
    return 0;
}

static int pump_clear(Pump *p) {
    for (Py_ssize_t i = 0; i < p->cap; i++)
        Py_CLEAR(p->table[i]);
    p->count = 0;
    return 0;
}

static void pump_dealloc(Pump *p) {
    PyObject_GC_UnTrack(p);
    pump_clear(p);
    PyMem_Free(p->table);
    PyMem_Free(p->rbuf);
    PyMem_Free(p->evs);
    PyMem_Free(p->out);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyObject *pump_add(Pump *p, PyObject *args) {
    int fd;
    PyObject *w;
    if (!PyArg_ParseTuple(args, "iO!", &fd, &WindowType, &w) || !not_running(p))
        return NULL;
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "negative fd");
        return NULL;
    }
    if (fd >= p->cap) {
        Py_ssize_t cap = p->cap ? p->cap : 64;
        while (cap <= fd)
            cap *= 2;
        PyObject **t = PyMem_Realloc(p->table, cap * sizeof(PyObject *));
        if (t == NULL)
            return PyErr_NoMemory();
        memset(t + p->cap, 0, (cap - p->cap) * sizeof(PyObject *));
        p->table = t;
        p->cap = cap;
    }
    if (p->table[fd] == NULL)
        p->count++;
    Py_INCREF(w);
    Py_XSETREF(p->table[fd], w);
    Py_RETURN_NONE;
}

static PyObject *pump_discard(Pump *p, PyObject *arg) {
    long fd = PyLong_AsLong(arg);
    if ((fd == -1 && PyErr_Occurred()) || !not_running(p))
        return NULL;
    if (fd >= 0 && fd < p->cap && p->table[fd] != NULL) {
        Py_CLEAR(p->table[fd]);
        p->count--;
    }
    Py_RETURN_NONE;
}

static void emit(Pump *p, int fd, int kind, const unsigned char *data, Py_ssize_t n) {
    Outcome *o = &p->out[p->nout++];
    o->win = fd < p->cap ? p->table[fd] : NULL;  /* borrowed: the table holds it */
    o->fd = fd;
    o->kind = kind;
    o->len = 0;
    o->data = NULL;
    if (kind == K_DATAGRAM && n > 0) {
        o->data = malloc(n);  /* GIL released: plain malloc */
        if (o->data == NULL) {
            p->nout--;  /* dropped, like a datagram the kernel had no room for */
            return;
        }
        memcpy(o->data, data, n);
        o->len = n;
    }
}

/* Send block `seq` of `w` on `fd`: header + slice of the source. */
static int send_block(Pump *p, int fd, Window *w, long long seq) {
    unsigned char hdr[4];
    long long off = (seq - 1) * (long long)w->blksize;
    long long len = (long long)w->src.len - off;
    struct iovec iov[2];
    struct msghdr msg;
    if (len > w->blksize)
        len = w->blksize;
    if (len < 0)
        len = 0;
    hdr[0] = 0;
    hdr[1] = OP_DATA;
    hdr[2] = (unsigned char)((seq >> 8) & 0xFF);
    hdr[3] = (unsigned char)(seq & 0xFF);
    iov[0].iov_base = hdr;
    iov[0].iov_len = 4;
    iov[1].iov_base = (char *)w->src.buf + (len ? off : 0);
    iov[1].iov_len = (size_t)len;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = 2;
    if (sendmsg(fd, &msg, 0) < 0 && errno == EFAULT) {
        emit(p, fd, K_FAULT, NULL, 0);  /* truncated in place: Python ends it */
        return -1;
    }
    return 0;  /* other errors (ENOBUFS...): lost like any datagram */
}

/* One datagram of n bytes in p->rbuf from the client of window w. */
static void on_datagram(Pump *p, int fd, Window *w, Py_ssize_t n, double now) {
    const unsigned char *b = p->rbuf;
    if (n < 4 || b[0] != 0 || b[1] != OP_ACK) {
        emit(p, fd, K_DATAGRAM, b, n);
        return;
    }
    long long block = (b[2] << 8) | b[3];
    long long base = w->base;
    long long d = (block - base + 1) & 0xFFFF;
    if (!(0 < d && d <= w->sent - base + 1))
        return;  /* duplicate or stray: Sorcerer's Apprentice, send nothing */
    long long acked = base - 1 + d;
    if (acked >= w->last) {
        emit(p, fd, K_DATAGRAM, b, n);  /* the final ACK: Python ends it */
        return;
    }
    w->base = acked + 1;
    if (w->retries) {
        w->retries = 0;
        w->timeout = w->base_timeout;
    }
    w->deadline = now + w->base_timeout;
    if (w->deadline < w->armed_at)
        emit(p, fd, K_REARM, NULL, 0);  /* only after a backoff */
    /* lock-step: exactly block acked+1; windowed: the new window, and when
       acked < sent the receiver lost acked+1, so the rest is sent again */
    long long end = w->base + w->ws;
    w->sent = acked;
    for (long long seq = acked + 1; seq < end && seq <= w->last; seq++) {
        w->sent = seq;
        if (send_block(p, fd, w, seq) < 0)
            return;
    }
}

/* epoll_wait after transfer traffic (see tftp_poll._Poller for both):
 * - few transfers (armed SPIN): busy-poll up to `spin` seconds, adaptively;
 * - many (armed NAP): when nothing is ready, sleep `nap` seconds first, so
 *   the ACKs that arrive meanwhile are handled as one batch instead of each
 *   waking the loop -- interrupt moderation, in software. */
static int wait_events(Pump *p, int maxevents, int timeout_ms, double spin, double nap) {
    int armed = p->armed;
    p->armed = ARMED_NONE;
    if (armed == ARMED_NAP && nap > 0) {
        int n = epoll_wait(p->epfd, p->evs, maxevents, 0);
        if (n != 0)
            return n;
        struct timespec ts = {0, (long)(nap * 1e9)};
        nanosleep(&ts, NULL);
    } else if (armed == ARMED_SPIN && spin > 0) {
        double start = now_mono();
        if (start >= p->spin_off_until) {
            double end = start + spin;
            do {
                int n = epoll_wait(p->epfd, p->evs, maxevents, 0);
                if (n != 0) {
                    p->misses = 0;
                    return n;
                }
            } while (now_mono() < end);
            if (++p->misses >= p->miss_limit) {
                p->misses = 0;
                p->spin_off_until = now_mono() + p->backoff;
            }
        }
    }
    return epoll_wait(p->epfd, p->evs, maxevents, timeout_ms);
}

static int ensure_buffers(Pump *p, int maxevents) {
    if (maxevents <= p->nevs)
        return 0;
    struct epoll_event *evs = PyMem_Realloc(p->evs, maxevents * sizeof *evs);
    if (evs == NULL)
        return -1;
    p->evs = evs;
    Outcome *out = PyMem_Realloc(p->out, 2 * maxevents * sizeof *out);
    if (out == NULL)
        return -1;
    p->out = out;
    p->nevs = maxevents;
    return 0;
}

/* The loop, without the GIL: returns 0, or -1 with errno set. */
static int pump_loop(Pump *p, double until, int maxevents, double spin, int spin_max,
                     double nap) {
    for (;;) {
        double now = now_mono();
        double left = until - now;
        int ms = left <= 0 ? 0 : left > 60.0 ? 60000 : (int)(left * 1000.0 + 0.999);
        int n = wait_events(p, maxevents, ms, spin, nap);
        if (n < 0)
            return errno == EINTR ? 0 : -1;
        now = now_mono();
        for (int i = 0; i < n; i++) {
            int fd = p->evs[i].data.fd;
            Window *w = fd < p->cap ? (Window *)p->table[fd] : NULL;
            if (w != NULL)  /* transfer traffic: see wait_events */
                p->armed = p->count <= spin_max ? ARMED_SPIN : ARMED_NAP;
            if (w == NULL || !w->has_src || !w->started) {
                emit(p, fd, K_READY, NULL, 0);
                continue;
            }
            ssize_t got = recv(fd, p->rbuf, RECV_MAX, MSG_DONTWAIT);
            if (got < 0)
                continue;  /* EAGAIN, or ECONNREFUSED from an ICMP error */
            on_datagram(p, fd, w, got, now);
        }
        if (p->nout > 0 || now >= until)
            return 0;
    }
}

static PyObject *pump_run(Pump *p, PyObject *args) {
    double until, spin, nap = 0.0;
    int maxevents, spin_max, rc, err = 0;
    if (!PyArg_ParseTuple(args, "didi|d", &until, &maxevents, &spin, &spin_max, &nap)
        || !not_running(p))
        return NULL;
    if (p->rbuf == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Pump.__init__ was not called");
        return NULL;
    }
    if (nap > 0 && !p->slack_set) {  /* the thread that runs the pump */
        prctl(PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0);
        p->slack_set = 1;
    }
    if (nap > 0.5)
        nap = 0.5;
    if (maxevents < 1 || ensure_buffers(p, maxevents) < 0)
        return maxevents < 1 ? (PyErr_SetString(PyExc_ValueError, "maxevents < 1"), NULL)
                             : PyErr_NoMemory();
    p->running = 1;
    p->nout = 0;
    Py_BEGIN_ALLOW_THREADS
    rc = pump_loop(p, until, maxevents, spin, spin_max, nap);
    if (rc < 0)
        err = errno;
    Py_END_ALLOW_THREADS
    p->running = 0;
    PyObject *list = PyList_New(0);
    for (int i = 0; i < p->nout; i++) {
        Outcome *o = &p->out[i];
        if (list != NULL) {
            PyObject *data = o->kind == K_DATAGRAM
                ? PyBytes_FromStringAndSize(o->data ? o->data : "", o->len)
                : (Py_INCREF(Py_None), Py_None);
            PyObject *t = data ? Py_BuildValue("(iiNO)", o->fd, o->kind, data,
                                               o->win ? o->win : Py_None) : NULL;
            if (t == NULL || PyList_Append(list, t) < 0)
                Py_CLEAR(list);
            Py_XDECREF(t);
        }
        free(o->data);
    }
    p->nout = 0;
    if (rc < 0) {
        Py_XDECREF(list);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return list;
}

static PyObject *pump_len(Pump *p, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromSsize_t(p->count);
}

static PyMethodDef pump_methods[] = {
    {"add", (PyCFunction)pump_add, METH_VARARGS, "add(fd, window): C may serve fd"},
    {"discard", (PyCFunction)pump_discard, METH_O, "discard(fd): forget fd (no error)"},
    {"run", (PyCFunction)pump_run, METH_VARARGS,
     "run(until, maxevents, spin_seconds, spin_max_sessions[, nap_seconds])"
     " -> [(fd, kind, data, window)]"},
    {"count", (PyCFunction)pump_len, METH_NOARGS, "number of windows in the table"},
    {NULL}
};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "appliance.servers._tftp_pump.Pump",
    .tp_basicsize = sizeof(Pump),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Pump(epoll_fd, spin_miss_limit=16, spin_backoff=1.0): serves ACK -> DATA"
              " for registered windows (the spin settings as tftp_poll's).",
    .tp_traverse = (traverseproc)pump_traverse,
    .tp_clear = (inquiry)pump_clear,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)pump_init,
    .tp_dealloc = (destructor)pump_dealloc,
    .tp_methods = pump_methods,
};

static struct PyModuleDef pump_module = {
    PyModuleDef_HEAD_INIT, "_tftp_pump",
    "The TFTP ACK -> DATA step in C (optional; see the C source's header).", -1, NULL,
};

PyMODINIT_FUNC PyInit__tftp_pump(void) {
    if (PyType_Ready(&WindowType) < 0 || PyType_Ready(&PumpType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&pump_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Window", (PyObject *)&WindowType) < 0
        || PyModule_AddObjectRef(m, "Pump", (PyObject *)&PumpType) < 0
        || PyModule_AddIntConstant(m, "READY", K_READY) < 0
        || PyModule_AddIntConstant(m, "DATAGRAM", K_DATAGRAM) < 0
        || PyModule_AddIntConstant(m, "REARM", K_REARM) < 0
        || PyModule_AddIntConstant(m, "FAULT", K_FAULT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
