package org.sparkatron.device;

import java.lang.reflect.InvocationHandler;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Proxy;

/**
 * A {@link Kernels} set whose every kernel call, the mixture-of-experts calls of {@link Kernels#moe()} included, runs
 * through one {@link Around}: how the strict CPU device opens its host-access scope around each kernel and how the
 * benchmark's kernel profile times each one. Both must see every call, so the MoE kernels are wrapped here once,
 * not by each user: {@code moe()} of the proxy returns a proxy of the target's {@link MoeKernels} (made on the first
 * call, since a target without MoE kernels throws there, and the same one after), and that call itself is not a
 * kernel and skips {@code around}.
 *
 * <p>Calls go to the target on the calling thread in the order issued, so the stream order of {@link Kernels}
 * holds; an exception of the target reaches the caller unwrapped. One rank's thread, as the target.
 */
public final class KernelProxy {
    private KernelProxy() {
    }

    /** What runs around one kernel call. */
    @FunctionalInterface
    public interface Around {
        /**
         * Runs {@code call} once and returns its result. {@code kernel} is the interface method called (declared by
         * {@link Kernels} or {@link MoeKernels}, or an {@link Object} method); {@code args} its arguments (null for none).
         */
        Object invoke(Method kernel, Object[] args, Call call) throws Throwable;
    }

    /** The wrapped call itself. */
    @FunctionalInterface
    public interface Call {
        Object proceed() throws Throwable;
    }

    /** {@code target} with every kernel call, its MoE kernels' too, run through {@code around}. */
    public static Kernels wrap(Kernels target, Around around) {
        InvocationHandler h = new InvocationHandler() {
            private MoeKernels moe;

            @Override
            public Object invoke(Object proxy, Method m, Object[] args) throws Throwable {
                if (m.getName().equals("moe") && m.getParameterCount() == 0 && m.getDeclaringClass() == Kernels.class) {
                    if (moe == null) {
                        moe = proxy(MoeKernels.class, target.moe(), around);
                    }
                    return moe;
                }
                return around.invoke(m, args, () -> call(m, target, args));
            }
        };
        return (Kernels) Proxy.newProxyInstance(Kernels.class.getClassLoader(), new Class<?>[] {Kernels.class}, h);
    }

    private static <T> T proxy(Class<T> type, T target, Around around) {
        InvocationHandler h = (proxy, m, args) -> around.invoke(m, args, () -> call(m, target, args));
        return type.cast(Proxy.newProxyInstance(type.getClassLoader(), new Class<?>[] {type}, h));
    }

    private static Object call(Method m, Object target, Object[] args) throws Throwable {
        try {
            return m.invoke(target, args);
        } catch (InvocationTargetException e) {
            throw e.getCause();
        }
    }
}
