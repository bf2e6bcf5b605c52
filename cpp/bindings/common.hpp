// cpp/bindings/common.hpp: argument checking shared by every binding file.
//
// IDs cross the boundary as 1-D C-contiguous int64 or uint64 NumPy arrays; int64 is
// reinterpreted bit for bit as uint64. Nothing is ever cast silently: any other dtype is a
// TypeError and any other shape a ValueError that quotes the shape.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <unistd.h>

#include <cstdint>
#include <sstream>
#include <string>

namespace embtab_py __attribute__((visibility("hidden"))) {

namespace py = pybind11;

// GilRelease is py::gil_scoped_release for the calls that run without the GIL, except at the
// interpreter's exit: a thread that asks for the GIL back while Python is finalizing is ended
// by CPython (pthread_exit), whose unwinding through the noexcept destructor aborts the
// process ("terminate called without an active exception", pybind11 issue 2215): a daemon
// thread still in an embtab call when the program ends. Such a thread instead sleeps until the
// process is gone (it could not run Python again anyway). A call made while Python is already
// finalizing (a __del__ run by the finalizing thread itself) keeps the GIL: it must return.
class GilRelease {
  public:
    GilRelease() : state_(finalizing() ? nullptr : PyEval_SaveThread()) {}
    ~GilRelease() {
        if (state_ == nullptr) return;  // the GIL was kept
        if (finalizing()) {
            for (;;) ::pause();
        }
        PyEval_RestoreThread(state_);
    }
    GilRelease(const GilRelease&) = delete;
    GilRelease& operator=(const GilRelease&) = delete;

  private:
    static bool finalizing() noexcept {
#if PY_VERSION_HEX >= 0x030D0000
        return Py_IsFinalizing() != 0;
#else
        return _Py_IsFinalizing() != 0;
#endif
    }
    PyThreadState* state_;
};

// shape_str renders an array's shape as Python does: "(3, 4)", "(5,)", "()".
inline std::string shape_str(const py::array& a) {
    std::ostringstream os;
    os << "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) {
        if (i) os << ", ";
        os << a.shape(i);
    }
    if (a.ndim() == 1) os << ",";
    os << ")";
    return os.str();
}

inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// native_order says whether a's elements are in this machine's byte order (a '>i8' array on a
// little-endian machine is not, and reading it as int64 would silently swap its bytes).
inline bool native_order(const py::array& a) {
    const char b = a.dtype().byteorder();
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return b != '<';
#else
    return b != '>';
#endif
}

// is_aligned says whether a's data pointer is a multiple of its element size. NumPy and torch
// allow arrays that are not (a view at an odd byte offset: np.frombuffer(buf, offset=1)); the
// core reads elements through T*, which is undefined behaviour on them, so such an array is
// copied where it is only read (aligned_input) and refused where it is written (check_aligned).
inline bool is_aligned(const py::array& a) {
    const auto size = static_cast<std::uintptr_t>(a.itemsize());
    return a.size() == 0 || size == 0 || reinterpret_cast<std::uintptr_t>(a.data()) % size == 0;
}

// aligned_input returns `a`, or an aligned C-contiguous copy of it when it is not aligned.
inline py::array aligned_input(const py::array& a) {
    if (is_aligned(a)) return a;
    return py::array(a.attr("copy")());
}

// check_aligned throws ValueError naming an array `name` that is not aligned (see is_aligned).
inline void check_aligned(const py::array& a, const std::string& name) {
    if (!is_aligned(a)) {
        throw py::value_error(name + " is not aligned to its " + std::to_string(a.itemsize()) +
                              "-byte elements (a view at an odd byte offset); pass a copy");
    }
}

// IdView is a read-only view of a validated ID array. It borrows the array's buffer;
// `owner` keeps the array alive for as long as the view is used.
struct IdView {
    py::array owner;
    const std::uint64_t* data = nullptr;
    std::size_t size = 0;
};

// refuse_masked throws TypeError for a NumPy masked array: its data would be read with the
// mask ignored (a masked ID used at whatever value it holds). numpy.ma not yet imported means
// no masked array exists, so the check costs a dictionary lookup on the usual path.
inline void refuse_masked(const py::handle& obj, const char* name) {
    PyObject* ma = PyDict_GetItemString(PyImport_GetModuleDict(), "numpy.ma");  // borrowed
    if (ma == nullptr) return;
    py::object cls = py::reinterpret_borrow<py::object>(ma).attr("MaskedArray");
    if (py::isinstance(obj, cls)) {
        throw py::type_error(std::string(name) + " is a numpy masked array, whose mask would be ignored "
                             "(the masked entries read at whatever values they hold); pass a plain "
                             "ndarray, e.g. " + name + ".compressed() or " + name + ".filled(value)");
    }
}

// as_ids checks that `obj` is a 1-D C-contiguous int64/uint64 NumPy array and views it.
// Throws TypeError (not an ndarray, a masked array, or another dtype) or ValueError (shape,
// layout).
inline IdView as_ids(const py::handle& obj, const char* name) {
    if (!py::isinstance<py::array>(obj)) {
        throw py::type_error(std::string(name) + " must be a numpy.ndarray of int64 or uint64, got " +
                             py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
    }
    refuse_masked(obj, name);
    py::array a = py::reinterpret_borrow<py::array>(obj);
    const auto dt = a.dtype();
    const bool ok = dt.kind() != 'b' && (dt.kind() == 'i' || dt.kind() == 'u') && dt.itemsize() == 8 && native_order(a);
    if (!ok) {
        throw py::type_error(std::string(name) + " must have dtype int64 or uint64, got " + dtype_str(a) +
                             (native_order(a) ? "" : ", not in this machine's byte order") +
                             " (IDs are never cast implicitly)");
    }
    if (a.ndim() != 1) {
        throw py::value_error(std::string(name) + " must be 1-D, got shape " + shape_str(a));
    }
    if (!(a.flags() & py::array::c_style) && a.shape(0) > 1) {
        throw py::value_error(std::string(name) + " must be C-contiguous (use numpy.ascontiguousarray)");
    }
    IdView v;
    v.owner = aligned_input(a);
    v.data = static_cast<const std::uint64_t*>(v.owner.data());
    v.size = static_cast<std::size_t>(a.shape(0));
    return v;
}

// check_path refuses a path holding a NUL byte (the C library would read a shorter path):
// ValueError naming the argument, as Python's open() does.
inline void check_path(const std::string& path, const char* name) {
    if (path.find('\0') != std::string::npos) {
        throw py::value_error(std::string(name) + " must not contain a NUL byte");
    }
}

// check_threads validates a num_threads argument (0 = all hardware threads) and returns it as
// the int the core takes: ValueError naming num_threads when it is negative or >= 2**31.
inline int check_threads(std::int64_t num_threads) {
    if (num_threads < 0) {
        throw py::value_error("num_threads must be >= 0 (0 = all hardware threads), got " +
                              std::to_string(num_threads));
    }
    if (num_threads > 2147483647) {
        throw py::value_error("num_threads must be < 2**31, got " + std::to_string(num_threads));
    }
    return static_cast<int>(num_threads);
}

}  // namespace embtab_py
