// Bindings of embtab/io.hpp: _core.atomic_write, and the translation of embtab::IoError to
// OSError (errno, message, filename) for every binding file.
#include <pybind11/pybind11.h>

#include <string>
#include <string_view>

#include "common.hpp"
#include "embtab/io.hpp"

namespace py = pybind11;

void bind_io(py::module_& m) {
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const embtab::IoError& e) {
            // message and path in the file system's encoding (surrogateescape): a path need
            // not be UTF-8, and os.fsencode() gives back its bytes
            auto fs_str = [](const std::string& x) {
                PyObject* o = PyUnicode_DecodeFSDefaultAndSize(x.data(), static_cast<Py_ssize_t>(x.size()));
                if (o == nullptr) throw py::error_already_set();
                return py::reinterpret_steal<py::object>(o);
            };
            py::object exc = py::module_::import("builtins").attr("OSError")(e.error, fs_str(e.what()), fs_str(e.path));
            PyErr_SetObject(PyExc_OSError, exc.ptr());
        }
    });

    m.def(
        "atomic_write",
        [](const std::string& path, const py::bytes& data) {
            embtab_py::check_path(path, "path");
            std::string copy(static_cast<std::string_view>(data));
            embtab_py::GilRelease release;
            embtab::atomic_write_file(path, copy);
        },
        py::arg("path"), py::arg("data"),
        "Replace the file at `path` with `data` atomically (a temporary file in the same directory, "
        "fsynced, renamed over `path`, then the directory fsynced): a failure at any point leaves "
        "the old file or the complete new one. Raises OSError (with errno and the path) when the "
        "system refuses a step, ValueError for a path holding a NUL byte. Releases the GIL.");
}
