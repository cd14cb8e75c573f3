/* The Window type of _tftp_pump.c: the hot state of one TFTP read transfer,
 * shared by C and Python (tftp_session.CSession subclasses it).  Block numbers
 * are absolute sequence numbers (0: the OACK, 1: DATA 1), reduced mod 65536
 * only on the wire.  Included by _tftp_pump.c only. */
#ifndef PLOWSHARE_TFTP_WINDOW_H
#define PLOWSHARE_TFTP_WINDOW_H

typedef struct {
    PyObject_HEAD
    long long base, sent, last;
    double deadline, armed_at, base_timeout, timeout;
    int blksize, ws, retries;
    char started;
    Py_buffer src;      /* valid while has_src */
    int has_src;
} Window;

static PyMemberDef window_members[] = {
    {"base", T_LONGLONG, offsetof(Window, base), 0, "lowest unACKed seq (0: OACK)"},
    {"sent", T_LONGLONG, offsetof(Window, sent), 0, "highest seq sent"},
    {"last", T_LONGLONG, offsetof(Window, last), 0, "seq of the short final block"},
    {"deadline", T_DOUBLE, offsetof(Window, deadline), 0, "monotonic time of the timeout"},
    {"armed_at", T_DOUBLE, offsetof(Window, armed_at), 0, "deadline of the live timer"},
    {"base_timeout", T_DOUBLE, offsetof(Window, base_timeout), 0, "negotiated timeout"},
    {"timeout", T_DOUBLE, offsetof(Window, timeout), 0, "current (backed-off) timeout"},
    {"blksize", T_INT, offsetof(Window, blksize), 0, "negotiated block size"},
    {"ws", T_INT, offsetof(Window, ws), 0, "negotiated windowsize"},
    {"retries", T_INT, offsetof(Window, retries), 0, "timeouts since progress"},
    {"started", T_BOOL, offsetof(Window, started), 0, "DATA 1 has gone out"},
    {NULL}
};

static void window_release(Window *w) {
    if (w->has_src) {
        PyBuffer_Release(&w->src);
        w->has_src = 0;
    }
}

static PyObject *window_set_source(Window *w, PyObject *obj) {
    window_release(w);
    if (obj != Py_None) {
        if (PyObject_GetBuffer(obj, &w->src, PyBUF_SIMPLE) < 0)
            return NULL;
        w->has_src = 1;
    }
    Py_RETURN_NONE;
}

static void window_dealloc(Window *w) {
    window_release(w);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyMethodDef window_methods[] = {
    {"set_source", (PyCFunction)window_set_source, METH_O,
     "set_source(buffer or None): the bytes C may send (released by None)"},
    {NULL}
};

static PyTypeObject WindowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "appliance.servers._tftp_pump.Window",
    .tp_basicsize = sizeof(Window),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Hot state of one TFTP read transfer (see the module doc).",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)window_dealloc,
    .tp_members = window_members,
    .tp_methods = window_methods,
};

#endif
